"""The library side of inference, shared by ``src/inference.py``, ``instructkgc extract`` and P-Tuning: build
the engine for a backend (model, tokenizer and template loaded once) and report the counts of a run."""
from __future__ import annotations

from .utils import get_logger

logger = get_logger(__name__)


def _move_to_device(model, bits: int):
    import torch

    if bits in (4, 8):  # placed by the loader; .to() fails on 8-bit models
        return model
    if torch.cuda.is_available():
        return model.to("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return model.to("mps")
    return model


def build_engine(model_args, data_args, finetuning_args, generating_args, infer_args):
    """``(engine, tokenizer, template)`` for the chosen backend."""
    from .infer import SamplingSettings, create_engine

    settings = SamplingSettings.from_args(generating_args)
    if infer_args.backend == "vllm":
        from .infer.vllm_engine import require_vllm
        from .loader import load_tokenizer
        from .template import get_template

        require_vllm()
        tokenizer = load_tokenizer(model_args, finetuning_args)
        template = get_template(data_args.template).fix_tokenizer(tokenizer)
        engine = create_engine("vllm", model_args=model_args, tokenizer=tokenizer,
                               stop_token_ids=template.stop_ids(tokenizer), settings=settings,
                               batch_size=infer_args.batch_size, constrained=infer_args.constrained_decoding,
                               finetuning_args=finetuning_args, tensor_parallel_size=infer_args.tensor_parallel_size,
                               max_model_len=data_args.cutoff_len + settings.max_new_tokens)
        return engine, tokenizer, template
    from .loader import load_model_and_tokenizer

    model, tokenizer, template = load_model_and_tokenizer(model_args, finetuning_args, is_trainable=False,
                                                          template=data_args.template,
                                                          compute_dtype=model_args.compute_dtype)
    model = _move_to_device(model, model_args.bits).eval()
    engine = create_engine("hf", model=model, tokenizer=tokenizer, stop_token_ids=template.stop_ids(tokenizer),
                           settings=settings, batch_size=infer_args.batch_size,
                           constrained=infer_args.constrained_decoding)
    return engine, tokenizer, template


def report(counts, output_file, cutoff_flag: str = "--cutoff_len") -> None:
    """Log what a prediction run wrote, and warn about truncated prompts, cut-off and invalid answers."""
    logger.info("wrote %s: %d records (%d answered now, %d already there)", output_file, counts.records,
                counts.generated, counts.skipped)
    for n, what in ((counts.truncated_prompts, f"prompts were longer than {cutoff_flag} and lost the start of "
                                                "their query"),
                    (counts.cut_off, "answers were cut off by --max_new_tokens before finishing"),
                    (counts.invalid_json, "answers are not valid JSON")):
        if n:
            logger.warning("%d of %d %s", n, counts.generated, what)
