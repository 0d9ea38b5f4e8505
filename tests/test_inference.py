"""Inference: batched == sequential greedy, resume after a kill, CLI (seed command, bad input, saved args),
vLLM (GPU only). The end-to-end convert -> finetune -> inference -> eval_func run is in test_finetune.py."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from instructkgc.infer import SamplingSettings
from instructkgc.infer.hf_engine import HFEngine
from instructkgc.infer.records import predict_file
from instructkgc.run_args import apply_saved_defaults
from instructkgc.template import build_prompt_ids, get_template_and_fix_tokenizer, stop_token_ids

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "llama2"


def convert(task, split, out, src="sample.json", schema="schema.json", extra=()):
    subprocess.run([sys.executable, str(REPO / "ie2instruction/convert_func.py"), "--src_path",
                    str(REPO / "data" / task / src), "--tgt_path", str(out), "--schema_path",
                    str(REPO / "data" / task / schema), "--task", task, "--split", split, "--split_num", "6",
                    *extra], check=True, capture_output=True)
    return out


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def ner_test(tmp_path_factory):
    return convert("NER", "test", tmp_path_factory.mktemp("ner") / "test.json")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = get_template_and_fix_tokenizer(TEMPLATE, tok)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tok, template


def engine(tiny, batch_size, max_new_tokens=24, constrained=False):
    model, tok, template = tiny
    return HFEngine(model, tok, stop_token_ids(template, tok), SamplingSettings(max_new_tokens=max_new_tokens),
                    batch_size=batch_size, constrained=constrained)


def prompts_of(tiny, path):
    _, tok, template = tiny
    return [build_prompt_ids(template, tok, r, 512)[0] for r in read_jsonl(path)]


def test_batched_equals_one_at_a_time(tiny, ner_test):
    prompts = prompts_of(tiny, ner_test)[:8]
    assert len({len(p) for p in prompts}) > 3  # different lengths: padding is really exercised
    batched = engine(tiny, 3, 16).generate(prompts)
    single = engine(tiny, 1, 16).generate(prompts)
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.num_tokens for g in batched] == [g.num_tokens for g in single]


class Crash(Exception):
    pass


class CrashAfter:
    """Wraps an engine and raises after ``n`` generate calls (a run killed between windows)."""

    def __init__(self, inner, n):
        self.inner, self.n = inner, n

    def generate(self, prompts, json_schemas=None, progress=None):
        if self.n == 0:
            raise Crash
        self.n -= 1
        return self.inner.generate(prompts, json_schemas, progress)


def test_resume_after_kill_gives_one_answer_per_record(tiny, ner_test, tmp_path):
    _, tok, template = tiny
    make = lambda r: build_prompt_ids(template, tok, r, 512)  # noqa: E731
    clean = tmp_path / "clean.json"
    predict_file(engine(tiny, 4, 8), make, ner_test, clean, window=5)
    out = tmp_path / "sub" / "out.json"
    with pytest.raises(Crash):  # a fresh run writes a temporary file: a crash leaves nothing behind
        predict_file(CrashAfter(engine(tiny, 4, 8), 2), make, ner_test, out, window=5)
    assert not out.parent.exists() or not list(out.parent.iterdir())
    with pytest.raises(Crash):  # --resume appends as it goes
        predict_file(CrashAfter(engine(tiny, 4, 8), 2), make, ner_test, out, resume=True, window=5)
    assert len(read_jsonl(out)) == 10
    with open(out, "a", encoding="utf-8") as f:  # a torn last line, as a kill in mid-write leaves
        f.write(clean.read_text(encoding="utf-8").splitlines()[10][:40])
    counts = predict_file(engine(tiny, 4, 8), make, ner_test, out, resume=True, window=5)
    assert counts.skipped == 10 and counts.generated == counts.records - 10
    assert out.read_text(encoding="utf-8") == clean.read_text(encoding="utf-8")
    inputs = read_jsonl(ner_test)
    answers = read_jsonl(out)
    assert [a["id"] for a in answers] == [r["id"] for r in inputs]
    assert all(list(a) == list(r) + ["output"] for a, r in zip(answers, inputs))  # key order kept


def test_resume_refuses_an_output_of_another_input(tiny, ner_test, tmp_path):
    _, tok, template = tiny
    out = tmp_path / "out.json"
    out.write_text(json.dumps({"instruction": "something else", "output": "{}"}) + "\n", encoding="utf-8")
    from ie2instruction.io import InputError

    with pytest.raises(InputError, match="not the answer to"):
        predict_file(engine(tiny, 4, 4), lambda r: build_prompt_ids(template, tok, r, 512), ner_test, out,
                     resume=True)


def cli(*args, script="src/inference.py"):
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          cwd=REPO, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def test_seed_readme_command_runs(tiny_model_dir, ner_test, tmp_path):
    out = tmp_path / "results" / "out.json"  # the directory does not exist yet
    res = cli("--stage", "sft", "--model_name_or_path", tiny_model_dir, "--model_name", "llama", "--template",
              "llama2", "--do_predict", "--input_file", str(ner_test), "--output_file", str(out),
              "--output_dir", str(tmp_path / "lora_test"), "--predict_with_generate", "--cutoff_len", "512",
              "--bf16", "--max_new_tokens", "12", "--batch_size", "8")
    assert res.returncode == 0, res.stderr
    answers, inputs = read_jsonl(out), read_jsonl(ner_test)
    assert [a["id"] for a in answers] == [r["id"] for r in inputs]
    assert all(isinstance(a["output"], str) for a in answers)


def test_bad_input_exits_2_with_one_line(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"instruction": "ok"}\n{"task": "NER"}\n', encoding="utf-8")
    out = tmp_path / "out.json"
    res = cli("--model_name_or_path", tiny_model_dir, "--template", "llama2", "--input_file", str(bad),
              "--output_file", str(out))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == f"{bad}:2: record has no 'instruction' string"
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_missing_names_the_extra(tiny_model_dir, ner_test, tmp_path):
    res = cli("--model_name_or_path", tiny_model_dir, "--template", "llama2", "--input_file", str(ner_test),
              "--output_file", str(tmp_path / "o.json"), "--backend", "vllm")
    assert res.returncode == 2
    assert "pip install 'instructkgc[vllm]'" in res.stderr.strip().splitlines()[-1]


def test_saved_training_arguments_are_defaults(tmp_path, caplog):
    (tmp_path / "instructkgc_args.json").write_text(json.dumps(
        {"model_name": "qwen2", "template": "qwen", "cutoff_len": 700}), encoding="utf-8")
    model_args = SimpleNamespace(checkpoint_dir=[str(tmp_path)], model_name="llama")
    data_args = SimpleNamespace(template="alpaca", cutoff_len=1024)
    apply_saved_defaults(["--checkpoint_dir", str(tmp_path)], model_args, data_args)
    assert (model_args.model_name, data_args.template, data_args.cutoff_len) == ("qwen2", "qwen", 700)
    data_args = SimpleNamespace(template="alpaca", cutoff_len=1024)
    import logging

    with caplog.at_level(logging.WARNING, logger="instructkgc"):
        logging.getLogger("instructkgc").propagate = True
        try:
            apply_saved_defaults(["--template", "alpaca"], model_args, data_args)
        finally:
            logging.getLogger("instructkgc").propagate = False
    assert data_args.template == "alpaca" and data_args.cutoff_len == 700
    assert "trained with" in caplog.text


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
                    reason="needs vllm and a GPU (the CPU contract is tests/test_vllm_contract.py)")
def test_vllm_backend_matches_hf_greedy(tiny_model_dir, ner_test, tmp_path):
    """On a GPU: vLLM's greedy answers equal the HF engine's (same dtype, prompts, stops, budget; kernels may
    flip a near-tie of the random model, so most, not all, must agree), and constrained ones all parse."""
    common = ["--model_name_or_path", tiny_model_dir, "--template", "llama2", "--input_file", str(ner_test),
              "--max_new_tokens", "64"]
    for name, extra in (("", ()), ("c_", ("--constrained_decoding",))):
        for backend in ("hf", "vllm"):
            res = cli(*common, *extra, "--backend", backend, "--output_file", str(tmp_path / f"{name}{backend}.json"))
            assert res.returncode == 0, res.stderr
    hf, vllm = read_jsonl(tmp_path / "hf.json"), read_jsonl(tmp_path / "vllm.json")
    assert [a["id"] for a in vllm] == [a["id"] for a in hf]
    assert sum(a["output"] == b["output"] for a, b in zip(hf, vllm)) >= 0.8 * len(hf)
    for a in read_jsonl(tmp_path / "c_vllm.json"):
        json.loads(a["output"])
