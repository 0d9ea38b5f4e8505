"""``python -m instructkgc.benchmark`` on a tiny slice with the tiny random model: every step runs, the table and
summary hold one row per stage and grounding setting, grounded answers only name spans of the input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from instructkgc.benchmark import reorder_schema, steps_for_budget, steps_for_epochs, strings_in_text
from instructkgc.run_args import read_args

pytest.importorskip("xgrammar")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INSTRUCTKGC_BENCHMARKS", REPO.parent / "shared" / "benchmarks"))


def _run(args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "instructkgc.benchmark", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=env)


def _dataset(tmp_path, task="RE"):
    folder = tmp_path / "ds"
    folder.mkdir()
    sample = (REPO / "data" / task / "sample_en.json").read_text(encoding="utf-8")
    (folder / "train.json").write_text(sample, encoding="utf-8")
    (folder / "test.json").write_text(sample, encoding="utf-8")
    (folder / "schema.json").write_text((REPO / "data" / task / "schema_en.json").read_text(encoding="utf-8"),
                                        encoding="utf-8")
    return folder


def _dev_and_train(out):
    """The lines of the held-out dev split and of the texts trained on, as the benchmark wrote them."""
    return [(out / "data" / name).read_text(encoding="utf-8").splitlines() for name in ("dev.json", "train.json")]


def test_benchmark_path_on_a_tiny_slice(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    res = _run(["--dataset", _dataset(tmp_path), "--task", "RE", "--model", tiny_model_dir, "--template", "alpaca",
                "--limit", 2, "--dev_size", 2, "--max_steps", 1, "--max_new_tokens", 40, "--out", out])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert set(summary["results"]) == {"zero-shot", "fine-tuned"}
    for stage in summary["results"].values():
        assert set(stage) == {"on", "off"}
        for row in stage.values():
            assert len(row["orders"]) == 3 and row["errors"] == 0  # constrained: every answer parses
            assert 0 <= row["F1"][0] <= 100 and row["F1"][1] >= 0
        on = stage["on"]
        assert on["strings_in_text"] == on["strings"]  # grounded: every string is in its text
    assert summary["texts"] == 2 and summary["training"]["steps"] == 1
    # the 3 schema orders are different instructions for the same texts
    instructions = [json.loads(line)["instruction"] for line in
                    (out / "instructions" / "test_all_orders.json").read_text(encoding="utf-8").splitlines()]
    n = summary["instructions_per_order"]
    assert len(instructions) == 3 * n and len(set(instructions)) > n
    # the test run trains on every text of train.json: the dev split only chooses recipes
    sample = [json.loads(line) for line in (REPO / "data" / "RE" / "sample_en.json").open(encoding="utf-8")]
    trained = [json.loads(line) for line in (out / "data" / "train.json").open(encoding="utf-8")]
    assert trained == sample and summary["train_texts"] == len(sample) and summary["held_out_texts"] == 0
    assert not (out / "data" / "dev.json").exists()
    table = (out / "summary.md").read_text(encoding="utf-8")
    assert "| zero-shot | on |" in table and "| fine-tuned | off |" in table and table in res.stdout


def test_fine_tuned_rows_only(tiny_model_dir, tmp_path):
    """--skip_zero_shot: another training budget on a set without re-running its zero-shot rows."""
    out = tmp_path / "out"
    common = ["--dataset", _dataset(tmp_path), "--task", "RE", "--model", tiny_model_dir, "--template", "alpaca",
              "--limit", 1, "--dev_size", 2, "--max_new_tokens", 24, "--grounded", "on", "--out", out,
              "--skip_zero_shot"]
    res = _run([*common, "--budget_minutes", 0])
    assert res.returncode == 1 and "nothing to run" in res.stderr
    res = _run([*common, "--max_steps", 2, "--batch_size", 2, "--bf16", "--lora_dropout", 0, "--hold_out_dev"])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    # --hold_out_dev: the dev split stays out of a test run's training too
    dev, train = _dev_and_train(out)
    assert len(dev) == summary["held_out_texts"] == 2 and not set(dev) & set(train)
    assert "the 2 dev texts held out" in (out / "summary.md").read_text(encoding="utf-8")
    assert list(summary["results"]) == ["fine-tuned"] and list(summary["results"]["fine-tuned"]) == ["on"]
    assert summary["training"]["bf16"] and read_args(out / "lora")["bf16"]  # the adapter was trained in bf16
    assert json.loads((out / "lora" / "adapter_config.json").read_text(encoding="utf-8"))["lora_dropout"] == 0
    assert "LoRA dropout 0.0" in (out / "summary.md").read_text(encoding="utf-8")
    assert summary["training"]["epochs"] == pytest.approx(2 * 2 / summary["training"]["examples"])
    assert not (out / "zero-shot").exists()


def test_budget_leaves_out_the_first_steps_one_time_costs():
    # 2 steps in 12 s (10 s of it the first), 6 steps in 20 s: 2 s per step, 30 steps in one minute
    assert steps_for_budget(1, {"train_runtime": 12.0}, {"train_runtime": 20.0}) == 30
    # noisy timings: the long run's mean (3 s per step)
    assert steps_for_budget(1, {"train_runtime": 20.0}, {"train_runtime": 18.0}) == 20
    assert steps_for_budget(0.001, {"train_runtime": 12.0}, {"train_runtime": 20.0}) == 1


def test_budget_scales_the_timed_batches_to_the_mean_batch():
    short = {"train_runtime": 12.0, "num_input_tokens_seen": 1000}
    # steps 3-6: 8 s for 800 positions (short texts); the training set's mean batch is laid out in 1600
    # positions, i.e. 16 s per step: 3 steps in a minute, not the 30 of the timed steps' pace
    long = {"train_runtime": 20.0, "num_input_tokens_seen": 1800, "train_batch_tokens": 1600.0}
    assert steps_for_budget(1, short, long) == 3
    assert steps_for_budget(1, short, dict(long, train_batch_tokens=400.0)) == 15  # 4 s per step


def test_steps_for_epochs():
    assert steps_for_epochs(4, 100, 4) == 100
    assert steps_for_epochs(4.5, 10, 4) == 12  # 11.25 rounded up: the last pass is not cut short
    assert steps_for_epochs(0.01, 10, 4) == 1


def test_budget_path(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    res = _run(["--dataset", _dataset(tmp_path), "--task", "RE", "--model", tiny_model_dir, "--template", "alpaca",
                "--limit", 1, "--dev_size", 9, "--max_new_tokens", 16, "--grounded", "on", "--out", out,
                "--skip_zero_shot", "--budget_minutes", 5, "--max_epochs", 1, "--eval_split", "dev"])
    assert res.returncode == 0, res.stderr[-3000:]
    dev, train = _dev_and_train(out)
    # a --dev_size given is kept past the default's fifth of the 12 texts, up to half of them
    assert len(dev) == 6 and len(train) == 6
    assert not set(dev) & set(train)  # the dev split is evaluated, never trained on
    assert (out / "data" / "eval.json").read_text(encoding="utf-8").splitlines() == dev[:1]  # --limit 1
    assert "time 2 training steps" in res.stdout and "time 6 training steps" in res.stdout
    timing = json.loads((out / "lora_timing" / "train_results.json").read_text(encoding="utf-8"))
    records = [json.loads(line) for line in (out / "instructions" / "train.json").open(encoding="utf-8")]
    assert timing["train_samples"] == len(records)
    assert timing["train_batch_tokens"] > 0 and timing["num_input_tokens_seen"] > 0  # what scales the budget
    # 5 minutes hold far more steps than one pass: the cap sets them
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["training"]["steps"] == \
        steps_for_epochs(1, len(records), 4)
    assert "capped at 1 epochs" in (out / "summary.md").read_text(encoding="utf-8")


def test_missing_dataset_file_is_one_line_and_status_2(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    res = _run(["--dataset", folder, "--task", "NER", "--out", tmp_path / "o"])
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"{folder / 'train.json'}: missing (a dataset folder holds "
                                               "train.json, test.json, schema.json)"]
    assert not (tmp_path / "o").exists()


def test_schema_orders_keep_every_item():
    import random

    schema = [{"event_type": "e", "trigger": True, "arguments": ["a", "b", "c", "d"]},
              {"event_type": "f", "trigger": True, "arguments": ["x", "y"]}]
    record = {"id": "1", "source": "s", "instruction": json.dumps({"instruction": "i", "schema": schema, "input": "t"})}
    orders = [reorder_schema(record, random.Random(seed), f"order{seed}") for seed in (1, 2, 3, 4)]
    for seed, r in zip((1, 2, 3, 4), orders):
        got = json.loads(r["instruction"])
        assert r["source"] == f"order{seed}" and got["input"] == "t"
        assert sorted(json.dumps({**i, "arguments": sorted(i["arguments"])}) for i in got["schema"]) == \
            sorted(json.dumps(i) for i in schema)
    assert len({r["instruction"] for r in orders}) > 1


def test_strings_in_text(tmp_path):
    pred = tmp_path / "p.json"
    rows = [{"instruction": json.dumps({"input": "Alice met Bob"}), "output": json.dumps(
        {"met": [{"head": "Alice", "tail": "Bobby"}, {"head": "", "tail": "Bob"}], "x": "NAN"})},
            {"instruction": json.dumps({"input": "t"}), "output": "not json"}]
    pred.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert strings_in_text(pred) == (2, 4)  # NAN is no string of the text; the empty string is no span


@pytest.mark.skipif(not (SHARED / "conll04" / "test.json").is_file(),
                    reason=f"{SHARED}/conll04 is not here (the public benchmark sets live outside the repository; "
                           "INSTRUCTKGC_BENCHMARKS=DIR points elsewhere)")
def test_real_benchmark_folder_zero_shot(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    res = _run(["--dataset", SHARED / "conll04", "--task", "RE", "--model", tiny_model_dir, "--template", "alpaca",
                "--limit", 1, "--budget_minutes", 0, "--grounded", "on", "--max_new_tokens", 32, "--out", out])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert list(summary["results"]) == ["zero-shot"] and summary["training"] is None
    row = summary["results"]["zero-shot"]["on"]
    assert row["strings_in_text"] == row["strings"]


def test_chinese_dataset_folder(tiny_model_dir, tmp_path):
    """The same command on a Chinese folder (--language zh): Chinese instructions, grounded spans of the text."""
    out = tmp_path / "out"
    folder = tmp_path / "ds"
    folder.mkdir()
    for name, source in (("train.json", "sample.json"), ("test.json", "sample.json"), ("schema.json", "schema.json")):
        (folder / name).write_text((REPO / "data" / "NER" / source).read_text(encoding="utf-8"), encoding="utf-8")
    res = _run(["--dataset", folder, "--task", "NER", "--language", "zh", "--model", tiny_model_dir, "--template",
                "llama2", "--limit", 2, "--dev_size", 2, "--budget_minutes", 0, "--grounded", "on",
                "--max_new_tokens", 32, "--out", out])
    assert res.returncode == 0, res.stderr[-3000:]
    first = json.loads((out / "instructions" / "test_all_orders.json").read_text(encoding="utf-8").splitlines()[0])
    assert "实体" in json.loads(first["instruction"])["instruction"]  # the Chinese instruction sentence
    row = json.loads((out / "summary.json").read_text(encoding="utf-8"))["results"]["zero-shot"]["on"]
    assert row["strings_in_text"] == row["strings"]
