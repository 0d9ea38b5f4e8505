"""Load the model for the chosen backend and build its engine (the engines themselves load nothing)."""
from __future__ import annotations


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
    """``(engine, tokenizer, template)`` for ``infer_args.backend`` (``hf`` or ``vllm``)."""
    from .engine import SamplingSettings

    settings = SamplingSettings.from_args(generating_args)
    if infer_args.backend == "vllm":
        from ..loader import load_tokenizer
        from ..template import get_template
        from .vllm_engine import VLLMEngine, load_vllm, require_vllm

        require_vllm()
        tokenizer = load_tokenizer(model_args, finetuning_args)
        template = get_template(data_args.template).fix_tokenizer(tokenizer)
        model = load_vllm(model_args, finetuning_args, infer_args, settings, tokenizer,
                          max_model_len=data_args.cutoff_len + settings.max_new_tokens)
        engine_class = VLLMEngine
    elif infer_args.backend == "hf":
        from ..loader import load_model_and_tokenizer
        from .hf_engine import HFEngine

        model, tokenizer, template = load_model_and_tokenizer(model_args, finetuning_args, is_trainable=False,
                                                              template=data_args.template,
                                                              compute_dtype=model_args.compute_dtype)
        model = _move_to_device(model, model_args.bits).eval()
        engine_class = HFEngine
    else:
        raise ValueError(f"unknown backend {infer_args.backend!r} (hf or vllm)")
    engine = engine_class(model, tokenizer, template.stop_ids(tokenizer), settings,
                          batch_size=infer_args.batch_size, constrained=infer_args.constrained_decoding)
    return engine, tokenizer, template
