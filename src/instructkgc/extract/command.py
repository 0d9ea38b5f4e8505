"""``instructkgc extract``: arguments, model/engine set-up, and the run with its summary on stderr.

Everything the user gives is checked before the model is loaded: documents, schema, task, output path,
format libraries. Bad input: one line on stderr, exit status 2, no output written.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from ie2instruction.io import check_output as guard_output
from ie2instruction.io import cli_errors
from ie2instruction.tasks import TASKS, get_task

from ..utils import UsageError
from . import outputs
from .documents import load_schema, read_documents
from .export import DEFAULT_BASE_IRI, FORMATS, check_format, check_output

NEO4J_FILES = ("nodes.csv", "relationships.csv")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--task", required=True, help=", ".join(TASKS))
    p.add_argument("--schema", required=True,
                   help="schema file (convert_func's 3-line format) or inline JSON: '[\"person\", \"org\"]'; "
                        "for EE/EEA/KG an object type -> roles / attributes")
    p.add_argument("--input", required=True,
                   help="text file (one document per line), JSONL/JSON with a 'text' field, Parquet with a 'text' "
                        "column, or - for stdin")
    p.add_argument("--input_format", default="auto", choices=["auto", "text", "jsonl", "parquet"])
    p.add_argument("--output", required=True, help="output file (- for stdout); a directory for --format neo4j")
    p.add_argument("--format", default="jsonl", choices=FORMATS)
    p.add_argument("--model_name_or_path", required=True)
    p.add_argument("--checkpoint_dir", default=None, help="comma-separated LoRA adapter folders")
    p.add_argument("--model_name", default=None, help="architecture name, as for src/inference.py (default: "
                                                       "the adapter's training value, else llama)")
    p.add_argument("--template", default=None, help="prompt template name, or 'auto' (chat_template) (default: "
                                                     "the adapter's training value, else alpaca)")
    p.add_argument("--system_prompt", default=None, help="override the template's system text")
    p.add_argument("--language", default="auto", choices=["auto", "zh", "en"],
                   help="language of the instruction sentence; auto: zh for documents that are mostly CJK")
    p.add_argument("--split_num", type=int, default=None,
                   help="most schema items per instruction, -1: no split (default: NER 6, KG 1, others 4)")
    p.add_argument("--cutoff_len", type=int, default=None,
                   help="most prompt tokens; longer texts are windowed (default: the adapter's training value, "
                        "else 512)")
    p.add_argument("--window_overlap", type=int, default=64,
                   help="tokens of text shared by consecutive windows (at most half a window)")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    p.add_argument("--bits", type=int, default=16, choices=[4, 8, 16, 32])
    p.add_argument("--grounded_decoding", action=argparse.BooleanOptionalAction, default=True,
                   help="with constrained decoding, entity / head / tail / trigger / argument strings can only be "
                        "spans of the window's text (default on)")
    p.add_argument("--constrained_decoding", action=argparse.BooleanOptionalAction, default=None,
                   help="JSON-schema constrained decoding (default: on when xgrammar is installed)")
    p.add_argument("--keep_ungrounded", action="store_true",
                   help="keep extracted spans that do not occur in the text (with null offsets)")
    p.add_argument("--base_iri", default=DEFAULT_BASE_IRI, help="namespace of the IRIs in --format turtle")
    p.add_argument("--trust_remote_code", action="store_true",
                   help="run Python code shipped in the model folder (auto_map); off unless given")
    outputs.add_arguments(p)
    from ..distributed import add_arguments as add_ray_arguments

    add_ray_arguments(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="instructkgc extract", description=__doc__.splitlines()[0]))


FALLBACKS = {"model_name": "llama", "template": "alpaca", "cutoff_len": 512}


def _fill_defaults(args) -> None:
    """``--model_name``, ``--template``, ``--cutoff_len`` not given: the values the adapter in
    ``--checkpoint_dir`` was trained with (``instructkgc_args.json``), else the usual defaults."""
    from ..run_args import fill_from_checkpoint

    if args.checkpoint_dir:
        first = args.checkpoint_dir.split(",")[0].strip()
        fill_from_checkpoint(first, args, tuple(FALLBACKS), {k for k in FALLBACKS if getattr(args, k) is not None})
    for key, fallback in FALLBACKS.items():
        if getattr(args, key) is None:
            setattr(args, key, fallback)


def _check(args) -> None:
    _fill_defaults(args)
    if args.split_num is not None and (args.split_num == 0 or args.split_num < -1):
        raise UsageError(f"--split_num must be -1 (no split) or at least 1, got {args.split_num}")
    for name in ("cutoff_len", "max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    if args.window_overlap < 0:
        raise UsageError("--window_overlap must be >= 0")
    from ..template import get_template

    get_template(args.template)  # UsageError for an unknown name
    check_format(args.format)
    check_output(args.output, args.format)
    outputs.check(args)
    inputs = {"--input": args.input, "--schema": args.schema if os.path.isfile(args.schema) else None}
    targets = [("--output", args.output)] if args.format != "neo4j" else \
        [("--output", os.path.join(args.output, name)) for name in NEO4J_FILES]
    targets += [(f"--{flag}", getattr(args, flag)) for flag in ("merge_log", "report") if getattr(args, flag)]
    for flag, path in targets:
        guard_output(path, flag, inputs)


def _constrained(args) -> bool:
    if args.constrained_decoding is not None:
        return args.constrained_decoding
    return args.backend == "vllm" or importlib.util.find_spec("xgrammar") is not None


def load_engine(args, constrained: bool):
    """``(engine, tokenizer, template)`` through ``instructkgc.infer.build_engine`` (as src/inference.py)."""
    from ..args import DataArguments, FinetuningArguments, GenerationArguments, InferArguments, ModelArguments
    from ..infer import build_engine

    model_args = ModelArguments(model_name_or_path=args.model_name_or_path, model_name=args.model_name,
                                checkpoint_dir=args.checkpoint_dir, bits=args.bits,
                                trust_remote_code=args.trust_remote_code)
    data_args = DataArguments(template=args.template, cutoff_len=args.cutoff_len)
    generating_args = GenerationArguments(max_new_tokens=args.max_new_tokens)
    infer_args = InferArguments(batch_size=args.batch_size, backend=args.backend, constrained_decoding=constrained)
    gpus = getattr(args, "gpus_per_worker", None)
    if args.backend == "vllm" and getattr(args, "ray", None) is not None and gpus and gpus >= 1:
        infer_args.tensor_parallel_size = int(gpus)  # --ray: the GPUs of each worker's engine
    return build_engine(model_args, data_args, FinetuningArguments(finetuning_type="lora"), generating_args,
                        infer_args)


def make_extractor(args, task, schema, split_num: int, engine, tokenizer, template, constrained: bool):
    """The pipeline of ``args`` around a loaded engine (one process, or each ``--ray`` worker)."""
    from .pipeline import Extractor, PromptBuilder

    builder = PromptBuilder(task, schema, split_num, template, tokenizer, args.cutoff_len, args.system_prompt)
    return Extractor(builder, engine, args.language, args.window_overlap, constrained, args.keep_ungrounded,
                     block_size=max(64, 4 * args.batch_size), grounded=args.grounded_decoding)


def run(args, engine=None, tokenizer=None, template=None) -> dict:
    """Run ``extract``; returns the summary. ``engine``/``tokenizer``/``template`` replace loading a model."""
    _check(args)
    try:
        task = get_task(args.task)
    except ValueError as err:
        raise UsageError(f"--task: {err}") from None
    schema = load_schema(task, args.schema)
    docs = read_documents(args.input, args.input_format)
    docs, skipped = outputs.skip_stored(args, docs)
    constrained = _constrained(args)
    split_num = args.split_num if args.split_num is not None else task.extract_split_num
    if args.ray is not None and engine is None:
        from ..distributed import run_extract

        summary, written = run_extract(args, task, schema, docs, split_num, constrained)
        return _finish(args, task, summary, {**written, **skipped})
    if engine is None and docs:
        engine, tokenizer, template = load_engine(args, constrained)
    extractor = make_extractor(args, task, schema, split_num, engine, tokenizer, template, constrained)
    if sys.stderr.isatty():
        from tqdm import tqdm

        extractor.bar = tqdm(desc=f"extract {task.name}", unit=" prompt", mininterval=0.5)
    judge = None
    if args.resolve_judge and engine is not None:
        judge = outputs.model_judge(engine, template, tokenizer, args.system_prompt)
    try:
        written = outputs.write(args, extractor.run(docs), judge)
    finally:
        if extractor.bar is not None:
            extractor.bar.close()
    return _finish(args, task, extractor.summary, {**written, **skipped})


def _finish(args, task, summary, counts: dict) -> dict:
    for line in summary.lines(task.name, task.result_field, args.keep_ungrounded):
        print(line, file=sys.stderr)
    outputs.print_summary(task.name, counts)
    where = args.output if args.output != "-" else "stdout"
    print(f"extract {task.name}: wrote {args.format} to {where}", file=sys.stderr)
    return summary.__dict__


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with cli_errors():
        run(args)
    return 0
