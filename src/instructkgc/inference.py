"""``src/inference.py``: answer converted test records with a base model, a LoRA adapter or a merged model.

The original flags work as before (REFERENCE §4.9); new ones: ``--batch_size`` (now used), ``--resume``,
``--backend hf|vllm``, ``--constrained_decoding``, ``--tensor_parallel_size``. With ``--checkpoint_dir``
holding the ``instructkgc_args.json`` written by training, ``--model_name``, ``--template`` and
``--cutoff_len`` default to the saved values.
"""
from __future__ import annotations

import sys
from typing import Optional

from .infer.factory import build_engine  # noqa: F401  (re-exported for extract)
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
    if infer_args.constrained_decoding:
        from .infer.constrained import require_xgrammar

        require_xgrammar()  # both engines: the vLLM one sends xgrammar's EBNF and closes cut answers with it
        if generating_args.num_beams != 1:
            raise UsageError("--constrained_decoding works with --num_beams 1 only")


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
        records = check_input(infer_args.input_file)  # bad input fails before the model is loaded
        engine, tokenizer, template = build_engine(model_args, data_args, finetuning_args, generating_args,
                                                   infer_args)
        window = max(records, 1) if engine.whole_file else max(64, 8 * infer_args.batch_size)
        try:
            counts = predict_file(
                engine, lambda record: build_prompt_ids(template, tokenizer, record, data_args.cutoff_len),
                infer_args.input_file, infer_args.output_file, resume=infer_args.resume,
                constrained=infer_args.constrained_decoding, window=window)
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
