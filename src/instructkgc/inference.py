"""``src/inference.py``: answer converted test records with a base model, a LoRA adapter or a merged model.

The original flags work as before (README: Inference); new ones: ``--batch_size`` (now used), ``--resume``,
``--backend hf|vllm``, ``--constrained_decoding``, ``--tensor_parallel_size``. With ``--checkpoint_dir``
holding the ``instructkgc_args.json`` written by training, ``--model_name``, ``--template`` and
``--cutoff_len`` default to the saved values. The reusable parts live in :mod:`instructkgc.predict`.
"""
from __future__ import annotations

import sys
from typing import Optional

from ie2instruction.io import cli_errors

from .utils import UsageError


def _check(infer_args, generating_args, data_args) -> None:
    if not infer_args.input_file:
        raise UsageError("--input_file is required")
    if not infer_args.output_file:
        raise UsageError("--output_file is required")
    if generating_args.max_new_tokens < 1:
        raise UsageError(f"--max_new_tokens must be at least 1, got {generating_args.max_new_tokens}")
    if data_args.cutoff_len < 1:
        raise UsageError(f"--cutoff_len must be at least 1, got {data_args.cutoff_len}")
    if infer_args.constrained_decoding:
        from .infer.constrained import require_xgrammar

        require_xgrammar()  # both engines: the vLLM one sends xgrammar's EBNF and closes cut answers with it
        if generating_args.num_beams != 1:
            raise UsageError("--constrained_decoding works with --num_beams 1 only")


def run(argv=None):
    """Parse ``argv``, answer the input file, return the counts."""
    from .args import parse_infer_args
    from .infer import build_engine
    from .infer.records import check_files, predict_file
    from .predict import report
    from .run_args import apply_saved_defaults
    from .template import build_prompt_ids

    argv = list(sys.argv[1:] if argv is None else argv)
    model_args, data_args, _, finetuning_args, generating_args, infer_args = parse_infer_args(argv)
    apply_saved_defaults(argv, model_args, data_args)
    _check(infer_args, generating_args, data_args)
    # bad input, an unusable output path or a wrong --resume file fail before the model is loaded
    records = check_files(infer_args.input_file, infer_args.output_file, infer_args.resume)
    if infer_args.ray is not None:
        from .distributed import run_inference

        counts = run_inference(model_args, data_args, finetuning_args, generating_args, infer_args)
        report(counts, infer_args.output_file)
        return counts
    engine, tokenizer, template = build_engine(model_args, data_args, finetuning_args, generating_args, infer_args)
    window = max(records, 1) if engine.whole_file else max(64, 8 * infer_args.batch_size)
    try:
        counts = predict_file(
            engine, lambda record: build_prompt_ids(template, tokenizer, record, data_args.cutoff_len),
            infer_args.input_file, infer_args.output_file, resume=infer_args.resume,
            constrained=infer_args.constrained_decoding, window=window,
            grounded=infer_args.grounded_decoding)
    finally:
        engine.close()
    report(counts, infer_args.output_file)
    return counts


def main(argv: Optional[list[str]] = None) -> None:
    with cli_errors():
        run(argv)
