"""``python -m instructkgc.benchmark``: quality on a dataset folder (``train.json``, ``test.json``, ``schema.json``).

Steps (each runs the user-facing command, printed before it runs, as ``make demo`` does): hold a dev split out
of ``train.json`` → convert train, and the evaluation split in 3 schema orders → zero-shot inference with
constrained decoding, span grounding on and off → LoRA fine-tuning within ``--budget_minutes`` → the
fine-tuned model, grounding on and off → ``eval_func`` per schema order. One table (printed, and saved as
``summary.md`` / ``summary.json``): F1 (P / R) as mean ± std over the schema orders, per-label F1, parse
failures, the share of predicted strings found in the text, instructions/s and training minutes.

Choices (recipe, steps) are made on ``--eval_split dev`` (held out of ``train.json``, never trained on);
``--eval_split test`` (the default) reports the test set once per setting, trained on all of ``train.json``
(the dev split chose a recipe, not a model; ``--hold_out_dev`` leaves it out of training here too).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

from .demo import REPO, Runner, StepFailed, _count_lines, _model_name, _rel, _script, _train_stats, model_folder

TASKS = ("NER", "RE", "EE")
ORDERS = (1, 2, 3)  # seeds of the evaluated schema orders
DEV_SIZE = 50  # texts of train.json in the default dev split (at most a fifth of them)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m instructkgc.benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, required=True, help="folder with train.json, test.json, schema.json")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--model", help="a local HF model folder, or smollm2 / gemma3-270m (bundled; default: smollm2)")
    p.add_argument("--template", default="auto", help="prompt template (default: the tokenizer's chat template)")
    p.add_argument("--language", default="en", choices=("en", "zh"), help="language of the instructions")
    p.add_argument("--out", type=Path, help="output folder (default: benchmark_out/<dataset name>)")
    p.add_argument("--limit", type=int, help="evaluate on the first N texts of the evaluation split")
    p.add_argument("--eval_split", default="test", choices=("test", "dev"))
    p.add_argument("--dev_size", type=int,
                   help=f"texts of train.json held out as the dev split (default: {DEV_SIZE}, at most a fifth of "
                        "train.json; a size given is kept, up to half of it)")
    p.add_argument("--hold_out_dev", action="store_true",
                   help="with --eval_split test, leave the dev split out of training as well (default: train on "
                        "all of train.json; with --eval_split dev it is always left out)")
    p.add_argument("--split_num", type=int, help="most schema items per instruction (default: convert_func's)")
    p.add_argument("--neg_schema", type=float, default=1.0, help="convert_func --neg_schema of the training set")
    p.add_argument("--budget_minutes", type=float, default=20.0,
                   help="LoRA training time (sets the steps from 2- and 6-step timing runs); 0: zero-shot only")
    p.add_argument("--max_steps", type=int, help="LoRA training steps (instead of the budget)")
    p.add_argument("--max_epochs", type=float,
                   help="most passes over the training instructions the budget may plan (default: no cap)")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--learning_rate", type=float, default=2e-3)
    p.add_argument("--lora_r", type=int, default=16)
    p.add_argument("--lora_layers", type=int, help="LoRA on the last N decoder layers only (default: all)")
    p.add_argument("--lora_dropout", type=float, default=0.0,
                   help="dropout on the LoRA inputs (0, chosen on the dev split; finetune's own default is 0.1)")
    p.add_argument("--bf16", action="store_true", help="train with bf16 autocast (faster on CPUs with AMX/AVX512-BF16)")
    p.add_argument("--cutoff_len", type=int, default=512)
    p.add_argument("--max_new_tokens", type=int, help="default: the longest training answer in tokens + 16")
    p.add_argument("--infer_batch_size", type=int, default=16)
    p.add_argument("--grounded", default="on,off", help="comma-separated grounding settings to run: on,off")
    p.add_argument("--skip_zero_shot", action="store_true",
                   help="fine-tuned rows only (e.g. another training budget on a set whose zero-shot rows exist)")
    return p.parse_args(argv)


def _read_jsonl(path: Path) -> list[dict]:
    """Raw records (JSON Lines or a JSON array), checked; a bad line fails with ``PATH:LINE: problem``."""
    from ie2instruction.io import read_records

    return [record for _, record in read_records(path)]


def _write_jsonl(path: Path, records) -> None:
    from ie2instruction.io import atomic_writer, dumps

    with atomic_writer(path) as f:
        for r in records:
            f.write(dumps(r) + "\n")


def reorder_schema(record: dict, rng: random.Random, source: str) -> dict:
    """A converted record whose instruction lists its schema items (and their roles / attributes) in a random
    order, tagged ``source`` (convert_func writes test instructions in code-point order)."""
    from ie2instruction.io import dumps

    instruction = json.loads(record["instruction"])
    items = [{k: rng.sample(v, len(v)) if isinstance(v, list) else v for k, v in item.items()}
             if isinstance(item, dict) else item for item in instruction["schema"]]
    instruction["schema"] = rng.sample(items, len(items))
    return {**record, "source": source, "instruction": dumps(instruction)}


def strings_in_text(pred_file: Path) -> tuple[int, int]:
    """(predicted strings found verbatim in their record's input, predicted strings): every string value of
    every parseable answer, ``NAN`` left out."""
    found = total = 0
    for record in _read_jsonl(pred_file):
        try:
            text = json.loads(record["instruction"])["input"]
            answer = json.loads(record["output"])
        except (ValueError, KeyError, TypeError):
            continue
        stack = [answer]
        while stack:
            v = stack.pop()
            if isinstance(v, dict):
                stack.extend(v.values())
            elif isinstance(v, list):
                stack.extend(v)
            elif isinstance(v, str) and v != "NAN":
                total += 1
                found += bool(v) and v in text  # the empty string is no span
    return found, total


def _f1_key(task: str) -> str:
    return "event_F1" if task == "EE" else "F1"


def _scores(path: Path, task: str, group: str) -> dict:
    """F1 / P / R (EE: trigger-level event scores and argument F1), parse failures and per-label F1 of one
    group (``--sort_by`` value) of an eval_func result."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))[group]
    except (OSError, ValueError, KeyError) as exc:
        raise StepFailed(f"{_rel(path)}: no score for {group} ({exc})") from None
    prefix = "event_" if task == "EE" else ""
    per_label = result.get("event_per_label" if task == "EE" else "per_label", {})
    out = {"F1": float(result[prefix + "F1"]), "P": float(result[prefix + "P"]), "R": float(result[prefix + "R"]),
           "errors": int(result["错误数"]), "per_label": {k: v["F1"] for k, v in per_label.items()}}
    if task == "EE":
        out["argument_F1"] = float(result["argument_F1"])
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def _max_new_tokens(model: Path, train_file: Path) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    outputs = [r["output"] for r in _read_jsonl(train_file) if isinstance(r.get("output"), str)]
    longest = max((len(tok(o)["input_ids"]) for o in outputs), default=64)
    return min(longest + 16, 1024)


def check_dataset(folder: Path) -> None:
    from ie2instruction.io import InputError

    for name in ("train.json", "test.json", "schema.json"):
        if not (folder / name).is_file():
            raise InputError(folder / name, None, "missing (a dataset folder holds train.json, test.json, "
                                                  "schema.json)")


def benchmark(args) -> dict:
    dataset = args.dataset.resolve()
    check_dataset(dataset)
    train_raw, test_raw = _read_jsonl(dataset / "train.json"), _read_jsonl(dataset / "test.json")
    out = (args.out or REPO / "benchmark_out" / dataset.name).resolve()
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    grounding = [g.strip() for g in args.grounded.split(",") if g.strip()]
    if not grounding or any(g not in ("on", "off") for g in grounding):
        raise StepFailed(f"--grounded {args.grounded}: choose from on,off")

    # the dev split: a seeded sample of train.json, never trained on when it is evaluated (or --hold_out_dev)
    order = list(range(len(train_raw)))
    random.Random(0).shuffle(order)
    dev_size = min(DEV_SIZE, len(train_raw) // 5) if args.dev_size is None else min(args.dev_size, len(train_raw) // 2)
    dev_ids = set(order[:dev_size])
    dev = [r for i, r in enumerate(train_raw) if i in dev_ids]
    held_out = dev_ids if args.eval_split == "dev" or args.hold_out_dev else set()
    trained_on = [r for i, r in enumerate(train_raw) if i not in held_out]
    _write_jsonl(data / "train.json", trained_on)
    if held_out:
        _write_jsonl(data / "dev.json", dev)
    elif (data / "dev.json").exists():
        (data / "dev.json").unlink()  # an earlier run's split, not held out this time
    evaluated = test_raw if args.eval_split == "test" else dev
    evaluated = evaluated[:args.limit] if args.limit else evaluated
    _write_jsonl(data / "eval.json", evaluated)

    fine_tune = args.max_steps is not None or args.budget_minutes > 0
    if args.skip_zero_shot and not fine_tune:
        raise StepFailed("--skip_zero_shot with --budget_minutes 0 leaves nothing to run")
    stages = (not args.skip_zero_shot) + fine_tune
    steps = 2 + 2 * len(grounding) * stages + fine_tune * (1 + len(TIMING_STEPS) * (args.max_steps is None))
    run = Runner(steps)
    started = time.perf_counter()
    model = model_folder(args.model)
    model_name = _model_name(model)
    convert, finetune, inference, evaluate = (_script("ie2instruction", "convert_func.py"),
                                              _script("src", "finetune.py"), _script("src", "inference.py"),
                                              _script("ie2instruction", "eval_func.py"))
    common = ["--model_name_or_path", _rel(model), "--model_name", model_name, "--template", args.template]
    split_num = [] if args.split_num is None else ["--split_num", args.split_num]
    base = [sys.executable, _rel(convert), "--task", args.task, "--language", args.language, *split_num]

    train_file = out / "instructions" / "train.json"
    run("convert train (random schema order)",
        [*base, "--src_path", _rel(data / "train.json"), "--tgt_path", _rel(train_file), "--schema_path",
         _rel(dataset / "schema.json"), "--split", "train", "--neg_schema", args.neg_schema, "--random_sort"])
    converted = out / "instructions" / f"{args.eval_split}.json"
    run(f"convert {args.eval_split}", [*base, "--src_path", _rel(data / "eval.json"), "--tgt_path", _rel(converted),
                                       "--schema_path", _rel(dataset / "schema.json"), "--split", "test"])
    records = _read_jsonl(converted)
    eval_records = [reorder_schema(r, rng, f"order{seed}") for seed in ORDERS
                    for rng in [random.Random(seed)] for r in records]
    eval_file = out / "instructions" / f"{args.eval_split}_all_orders.json"
    _write_jsonl(eval_file, eval_records)
    max_new_tokens = args.max_new_tokens or _max_new_tokens(model, train_file)

    def predict_and_score(stage: str, grounded: str, adapter: Optional[Path]) -> dict:
        folder = out / stage / f"grounded_{grounded}"
        pred = folder / "pred_all_orders.json"
        if pred.exists():
            pred.unlink()  # inference appends (resume); every run starts afresh
        cmd = [sys.executable, _rel(inference), "--stage", "sft", *common, "--input_file", _rel(eval_file),
               "--output_file", _rel(pred), "--output_dir", _rel(folder), "--batch_size", args.infer_batch_size,
               "--max_new_tokens", max_new_tokens, "--cutoff_len", args.cutoff_len,
               "--constrained_decoding", "true", "--grounded_decoding", "true" if grounded == "on" else "false",
               "--predict_with_generate", "--do_predict"]
        if adapter is not None:
            cmd += ["--checkpoint_dir", _rel(adapter)]
        seconds = run(f"{stage}, grounding {grounded}: {len(eval_records)} instructions "
                      f"({len(evaluated)} texts x {len(ORDERS)} schema orders)", cmd)
        predictions = _read_jsonl(pred)
        if len(predictions) != len(eval_records):
            raise StepFailed(f"{_rel(pred)}: expected {len(eval_records)} predictions")
        score_file = folder / "score.json"
        run(f"{stage}, grounding {grounded}: score (each schema order on its own: --sort_by source)",
            [sys.executable, _rel(evaluate), "--path1", _rel(pred), "--task", args.task, "--sort_by", "source",
             "--out_path", _rel(score_file)])
        per_order = [_scores(score_file, args.task, f"order{seed}") for seed in ORDERS]
        found, total = strings_in_text(pred)
        row = {"orders": per_order, "instructions_per_s": len(eval_records) / seconds, "seconds": seconds,
               "strings": total, "strings_in_text": found}
        for key in ("F1", "P", "R") + (("argument_F1",) if args.task == "EE" else ()):
            row[key] = _mean_std([o[key] for o in per_order])
        row["errors"] = sum(o["errors"] for o in per_order)
        labels = sorted({k for o in per_order for k in o["per_label"]})
        row["per_label"] = {k: _mean_std([o["per_label"].get(k, 0.0) for o in per_order])[0] for k in labels}
        return row

    results: dict = {} if args.skip_zero_shot else {"zero-shot": {g: predict_and_score("zero-shot", g, None)
                                                                   for g in grounding}}
    training = None
    if fine_tune:
        training = train(run, args, common, finetune, train_file, out)
        results["fine-tuned"] = {g: predict_and_score("fine-tuned", g, training["adapter"]) for g in grounding}
        training["adapter"] = _rel(training["adapter"])
    summary = {"dataset": _rel(dataset), "task": args.task, "model": _rel(model), "eval_split": args.eval_split,
               "texts": len(evaluated), "train_texts": len(trained_on), "held_out_texts": len(held_out),
               "instructions_per_order": len(records),
               "orders": list(ORDERS), "limit": args.limit, "max_new_tokens": max_new_tokens,
               "results": results, "training": training, "total_seconds": time.perf_counter() - started,
               "out": _rel(out)}
    write_summary(summary, out)
    return summary


TIMING_STEPS = (2, 6)  # two timing runs: their difference leaves out the first step's one-time costs


def steps_for_budget(minutes: float, short: dict, long: dict) -> int:
    """Training steps that fit ``minutes``, from the results of the two timing runs (``TIMING_STEPS``;
    ``train_results.json``). Their difference leaves out the first steps' one-time costs (allocation,
    warm-up: 10 s against 3.5 s per step for SmolLM2 on 2 cores). The timed batches are a few random ones and
    a batch costs about its positions, so their time per position (``num_input_tokens_seen``) is scaled to the
    mean batch of the whole training set as the collator lays it out (``train_batch_tokens``): 4 timed steps of
    short texts would otherwise overrun the budget by a third. The estimate can still lean to more steps than fit
    (full runs went up to 47% slower per step than their estimate); finetune's ``--max_train_minutes`` holds the
    budget (training ends at the first step past it, the learning rate where the schedule had it). Without
    position counts, the time per timed step."""
    seconds = long.get("train_runtime", 0) - short.get("train_runtime", 0)
    tokens = long.get("num_input_tokens_seen", 0) - short.get("num_input_tokens_seen", 0)
    if seconds <= 0:  # timings too noisy to subtract: the long run's mean
        per_step = long.get("train_runtime", 0) / TIMING_STEPS[1]
    elif tokens > 0 and long.get("train_batch_tokens"):
        per_step = seconds / tokens * long["train_batch_tokens"]
    else:
        per_step = seconds / (TIMING_STEPS[1] - TIMING_STEPS[0])
    return max(1, int(minutes * 60 / max(per_step, 1e-3)))


def steps_for_epochs(epochs: float, examples: int, batch_size: int) -> int:
    """Steps of ``batch_size`` instructions that make ``epochs`` passes over ``examples`` (at least one)."""
    return max(1, math.ceil(epochs * examples / batch_size))


def train(run: Runner, args, common: list, finetune: Path, train_file: Path, out: Path) -> dict:
    """LoRA fine-tuning for ``--max_steps`` or, by default, for as many steps as fit ``--budget_minutes``
    at the speed measured by two timing runs, the budget also enforced (finetune's ``--max_train_minutes``)."""
    lora = out / "lora"

    def command(steps: int, folder: Path, minutes: float | None = None) -> list:
        return [sys.executable, _rel(finetune), "--do_train", "--stage", "sft", *common,
                "--train_file", _rel(train_file), "--output_dir", _rel(folder), "--overwrite_output_dir",
                "--per_device_train_batch_size", args.batch_size, "--max_steps", steps,
                "--learning_rate", args.learning_rate, "--lr_scheduler_type", "cosine",
                "--warmup_steps", max(1, steps // 20), "--cutoff_len", args.cutoff_len, "--finetuning_type", "lora",
                "--lora_r", args.lora_r, "--lora_alpha", 2 * args.lora_r, "--lora_dropout", args.lora_dropout,
                "--lora_target_modules", "all",
                "--logging_steps", max(1, steps // 10), "--save_strategy", "no", "--report_to", "none",
                "--seed", "42", "--include_num_input_tokens_seen", "true", *(["--bf16"] if args.bf16 else []),
                *(["--lora_layers", args.lora_layers] if args.lora_layers else []),
                *(["--max_train_minutes", minutes] if minutes else [])]

    steps, minutes, capped = args.max_steps, None, False
    examples = _count_lines(train_file)
    if steps is None:
        minutes = args.budget_minutes
        timings = []
        for n in TIMING_STEPS:
            run(f"time {n} training steps (sets the steps of the budget)", command(n, out / "lora_timing"))
            timings.append(_train_stats(out / "lora_timing"))
        steps = steps_for_budget(args.budget_minutes, *timings)
        if args.max_epochs:
            cap = steps_for_epochs(args.max_epochs, examples, args.batch_size)
            capped, steps = cap < steps, min(steps, cap)
    seconds = run(f"LoRA fine-tuning ({steps} steps)", command(steps, lora, minutes))
    if not (lora / "adapter_config.json").is_file():
        raise StepFailed(f"{_rel(lora)}: fine-tuning left no adapter")
    stats = _train_stats(lora)
    trained = stats.get("train_steps", steps)
    return {"steps": trained, "planned_steps": steps, "batch_size": args.batch_size,
            "learning_rate": args.learning_rate, "lora_r": args.lora_r, "lora_layers": args.lora_layers,
            "lora_dropout": args.lora_dropout, "max_epochs": args.max_epochs if capped else None,
            "bf16": args.bf16, "minutes": seconds / 60,
            "train_loss": stats.get("train_loss"),
            "examples": examples, "epochs": trained * args.batch_size / max(examples, 1), "adapter": lora}


def _pm(value: tuple[float, float]) -> str:
    return f"{value[0]:.2f} ± {value[1]:.2f}"


def render(summary: dict) -> str:
    ee = summary["task"] == "EE"
    head = "| stage | grounded | F1 (mean ± std) | P | R |" + (" argument F1 |" if ee else "") + \
           " parse failures | strings in text | instructions/s |"
    lines = [head, "|---|---|---:|---:|---:|" + ("---:|" if ee else "") + "---:|---:|---:|"]
    for stage, by_grounding in summary["results"].items():
        for grounded, r in by_grounding.items():
            share = f"{100 * r['strings_in_text'] / r['strings']:.1f}% of {r['strings']}" if r["strings"] else "-"
            lines.append(f"| {stage} | {grounded} | {_pm(r['F1'])} | {r['P'][0]:.2f} | {r['R'][0]:.2f} |"
                         + (f" {_pm(r['argument_F1'])} |" if ee else "")
                         + f" {r['errors']} | {share} | {r['instructions_per_s']:.2f} |")
    labels = sorted({k for g in summary["results"].values() for r in g.values() for k in r["per_label"]})
    columns = [(stage, g) for stage, by in summary["results"].items() for g in by]
    lines += ["", "| label (F1, mean over orders) | " + " | ".join(f"{s}, grounded {g}" for s, g in columns) + " |",
              "|---|" + "---:|" * len(columns)]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(f"{summary['results'][s][g]['per_label'].get(label, 0.0):.1f}"
                                                  for s, g in columns) + " |")
    lines += ["", f"- {summary['task']} on `{summary['dataset']}` ({summary['eval_split']} split, "
                  f"{summary['texts']} texts{', --limit ' + str(summary['limit']) if summary['limit'] else ''}; "
                  f"{summary['instructions_per_order']} instructions per schema order, orders "
                  f"{summary['orders']}); model `{summary['model']}`; max_new_tokens {summary['max_new_tokens']}"]
    tr = summary["training"]
    if tr:
        loss = f", final train loss {tr['train_loss']:.3f}" if isinstance(tr.get("train_loss"), float) else ""
        bf16 = ", bf16" if tr.get("bf16") else ""
        cut = f" (of {tr['planned_steps']} planned: the budget ended it)" \
            if tr.get("planned_steps", tr["steps"]) != tr["steps"] else ""
        cut += f" (the budget's steps capped at {tr['max_epochs']:g} epochs)" if tr.get("max_epochs") else ""
        layers = f" on the last {tr['lora_layers']} layers" if tr.get("lora_layers") else ""
        held = f", the {summary['held_out_texts']} dev texts held out" if summary["held_out_texts"] else ""
        lines.append(f"- LoRA r={tr['lora_r']}{layers}{bf16}, {tr['steps']} steps{cut} × batch {tr['batch_size']} "
                     f"over {tr['examples']} training instructions from {summary['train_texts']} texts{held} "
                     f"({tr['epochs']:.2f} epochs), "
                     f"lr {tr['learning_rate']}, LoRA dropout {tr.get('lora_dropout', 0.1)}: "
                     f"{tr['minutes']:.1f} training minutes{loss}")
    lines.append(f"- instructions/s include loading the model; total {summary['total_seconds'] / 60:.1f} min")
    return "\n".join(lines)


def write_summary(summary: dict, out: Path) -> None:
    from ie2instruction.io import atomic_writer

    with atomic_writer(out / "summary.json") as f:
        f.write(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    with atomic_writer(out / "summary.md") as f:
        f.write(render(summary) + "\n")


def main(argv=None) -> int:
    from ie2instruction.io import InputError
    from ie2instruction.io import fail as fail_input

    args = parse_args(argv)
    try:
        summary = benchmark(args)
    except InputError as err:
        fail_input(err)
    except StepFailed as exc:
        print(f"\nbenchmark FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbenchmark interrupted", file=sys.stderr)
        return 130
    print("\n" + render(summary))
    print(f"\nsummary saved to {summary['out']}/summary.md and summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
