"""``src/inference.py``: answer converted test records with a base model, a LoRA adapter or a merged model.

The original flags work as before (REFERENCE §4.9); new ones: ``--batch_size`` (now used), ``--resume``,
``--backend hf|vllm``, ``--constrained_decoding``, ``--tensor_parallel_size``. With ``--checkpoint_dir``
holding the ``instructkgc_args.json`` written by training, ``--model_name``, ``--template`` and
``--cutoff_len`` default to the saved values.
"""
from __future__ import annotations

import sys
from typing import Optional

from .utils import UsageError, fail, get_logger

logger = get_logger(__name__)

SAVED_DEFAULTS = ("model_name", "template", "cutoff_len")


def _given_flags(argv) -> set[str]:
    return {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}


def apply_saved_defaults(argv, model_args, data_args) -> None:
    """Defaults from the adapter's training arguments; an explicit different value is warned about."""
    from .loader import load_saved_train_args

    if not model_args.checkpoint_dir:
        return
    saved = load_saved_train_args(model_args.checkpoint_dir[0]) or {}
    given = _given_flags(argv)
    for key in SAVED_DEFAULTS:
        if saved.get(key) is None:
            continue
        target = model_args if key == "model_name" else data_args
        if key not in given:
            setattr(target, key, saved[key])
        elif getattr(target, key) != saved[key]:
            logger.warning("--%s %s differs from the %s %r this adapter was trained with (%s); answers may "
                           "degrade", key, getattr(target, key), key, saved[key], model_args.checkpoint_dir[0])


def _check(infer_args, generating_args) -> None:
    if not infer_args.input_file:
        raise UsageError("--input_file is required")
    if not infer_args.output_file:
        raise UsageError("--output_file is required")
    if infer_args.constrained_decoding and infer_args.backend == "hf":
        from .infer.constrained import require_xgrammar

        require_xgrammar()
        if generating_args.num_beams != 1:
            raise UsageError("--constrained_decoding works with --num_beams 1 only")


def _move_to_device(model, bits: int):
    import torch

    if bits in (4, 8):  # placed by the loader; .to() fails on 8-bit models (REFERENCE §8 item 23)
        return model
    if torch.cuda.is_available():
        return model.to("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return model.to("mps")
    return model


def build_engine(model_args, data_args, finetuning_args, generating_args, infer_args):
    """``(engine, tokenizer, template)`` for the chosen backend."""
    from .infer import SamplingSettings, create_engine
    from .template import get_template_and_fix_tokenizer, stop_token_ids

    settings = SamplingSettings.from_args(generating_args)
    if infer_args.backend == "vllm":
        from .infer.vllm_engine import require_vllm
        from .loader import load_tokenizer

        require_vllm()
        tokenizer = load_tokenizer(model_args, finetuning_args)
        template = get_template_and_fix_tokenizer(data_args.template, tokenizer)
        engine = create_engine("vllm", model_args=model_args, tokenizer=tokenizer,
                               stop_token_ids=stop_token_ids(template, tokenizer), settings=settings,
                               batch_size=infer_args.batch_size, constrained=infer_args.constrained_decoding,
                               finetuning_args=finetuning_args, tensor_parallel_size=infer_args.tensor_parallel_size,
                               max_model_len=data_args.cutoff_len + settings.max_new_tokens)
        return engine, tokenizer, template
    from .loader import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_args, finetuning_args, is_trainable=False,
                                                compute_dtype=model_args.compute_dtype, template=data_args.template)
    model = _move_to_device(model, model_args.bits).eval()
    template = get_template_and_fix_tokenizer(data_args.template, tokenizer)
    engine = create_engine("hf", model=model, tokenizer=tokenizer, stop_token_ids=stop_token_ids(template, tokenizer),
                           settings=settings, batch_size=infer_args.batch_size,
                           constrained=infer_args.constrained_decoding)
    return engine, tokenizer, template


def report(counts, output_file, cutoff_flag: str = "--cutoff_len") -> None:
    logger.info("wrote %s: %d records (%d answered now, %d already there)", output_file, counts.records,
                counts.generated, counts.skipped)
    for n, what in ((counts.truncated_prompts, f"prompts were longer than {cutoff_flag} and lost the start of "
                                                "their query"),
                    (counts.cut_off, "answers were cut off by --max_new_tokens before finishing"),
                    (counts.invalid_json, "answers are not valid JSON")):
        if n:
            logger.warning("%d of %d %s", n, counts.generated, what)


def run(argv=None):
    """Parse ``argv``, answer the input file, return the counts."""
    from ie2instruction.io import InputError
    from ie2instruction.io import fail as fail_input

    from .args import parse_infer_args
    from .infer.records import check_input, predict_file
    from .template import build_prompt_ids

    argv = list(sys.argv[1:] if argv is None else argv)
    model_args, data_args, _, finetuning_args, generating_args, infer_args = parse_infer_args(argv)
    try:
        apply_saved_defaults(argv, model_args, data_args)
        _check(infer_args, generating_args)
        check_input(infer_args.input_file)  # bad input fails before the model is loaded
        engine, tokenizer, template = build_engine(model_args, data_args, finetuning_args, generating_args,
                                                   infer_args)
        try:
            counts = predict_file(
                engine, lambda record: build_prompt_ids(template, tokenizer, record, data_args.cutoff_len),
                infer_args.input_file, infer_args.output_file, resume=infer_args.resume,
                constrained=infer_args.constrained_decoding, window=max(64, 8 * infer_args.batch_size),
                grounded=infer_args.grounded_decoding)
        finally:
            engine.close()
    except UsageError as err:
        fail(str(err))
    except InputError as err:
        fail_input(err)
    report(counts, infer_args.output_file)
    return counts


def main(argv: Optional[list[str]] = None) -> None:
    run(argv)
