"""The device check of a CUDA box, on a tiny llama (hidden 256) built here: run by ``bench/gpu_check.sh``.

Steps (each prints ``PASS name (seconds)`` or ``FAIL name: why``; the exit status is 1 if any failed):

* ``infer``: bf16 HF inference, batched == one-at-a-time (greedy), tokens/s of batched generation;
* ``constrained``: every constrained answer parses; the share of generation time spent in the grammar;
* ``qlora`` / ``qlora_gc``: QLoRA 4-bit, 5 steps, without and with gradient checkpointing; then 4-bit
  inference with the adapter through ``src/inference.py``;
* ``lora16``: 16-bit LoRA, 5 steps;
* ``ds_<config>_<precision>``: torchrun with each shipped DeepSpeed config in bf16 and fp16 (LoRA on ZeRO-2,
  full fine-tuning on ZeRO-3);
* ``ngpu``: ``ft_scripts/fine_llama.bash`` under ``CUDA_VISIBLE_DEVICES=0`` starts one process.

``--cpu`` rehearses the steps a CPU can run (fp32 inference, QLoRA, 16-bit LoRA) on a smaller model; the
tests run it. Figures go to ``OUT/gpu_check.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "llama2"


def convert(task: str, split: str, out: Path) -> Path:
    subprocess.run([sys.executable, str(REPO / "ie2instruction/convert_func.py"), "--src_path",
                    str(REPO / "data" / task / "sample.json"), "--tgt_path", str(out), "--schema_path",
                    str(REPO / "data" / task / "schema.json"), "--task", task, "--split", split, "--split_num", "4"],
                   check=True, capture_output=True)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def check_inference(model_dir: str, test_file: Path, cpu: bool, figures: dict) -> None:
    """Batched == one-at-a-time; tokens/s; constrained answers parse; the grammar's share of the time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from instructkgc.infer import SamplingSettings
    from instructkgc.infer.constrained import JsonSchemaProcessor
    from instructkgc.infer.greedy import GreedyLoop
    from instructkgc.infer.hf_engine import HFEngine
    from instructkgc.infer.records import answer_schema
    from instructkgc.template import build_prompt_ids, get_template_and_fix_tokenizer, stop_token_ids

    tok = AutoTokenizer.from_pretrained(model_dir)
    template = get_template_and_fix_tokenizer(TEMPLATE, tok)
    dtype = torch.float32 if cpu else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to("cpu" if cpu else "cuda").eval()
    records = read_jsonl(test_file)
    prompts = [build_prompt_ids(template, tok, r, 512)[0] for r in records]
    stops = stop_token_ids(template, tok)
    settings = SamplingSettings(max_new_tokens=32)
    batched = HFEngine(model, tok, stops, settings, batch_size=len(prompts)).generate(prompts)  # warm-up too
    sync()
    start = time.perf_counter()
    batched = HFEngine(model, tok, stops, settings, batch_size=len(prompts)).generate(prompts)
    sync()
    seconds = time.perf_counter() - start
    figures["hf_batched_tokens_per_s"] = round(sum(g.num_tokens for g in batched) / seconds, 1)
    single = HFEngine(model, tok, stops, settings, batch_size=1).generate(prompts)
    same = sum(a.text == b.text for a, b in zip(batched, single))
    figures["batched_equals_single"] = f"{same}/{len(prompts)}"
    if not cpu and same < len(prompts):  # bf16 batched kernels may flip a near-tie; report, do not hide
        print(f"note: bf16 batched == one-at-a-time for {same}/{len(prompts)} answers", flush=True)
    if cpu:
        assert same == len(prompts), f"batched != one-at-a-time for {len(prompts) - same} answers"

    schemas = [answer_schema(r) for r in records]
    grammar_seconds = [0.0]
    # the grammar work: the generate processor (static batches) and the greedy loop's token choice and
    # jump-forward proposals (the default engine)
    timed_methods = [(JsonSchemaProcessor, "__call__"), (GreedyLoop, "_choose"), (GreedyLoop, "_next_input")]
    originals = [getattr(cls, name) for cls, name in timed_methods]

    def timed(method):
        def wrapped(*args):
            sync()
            t0 = time.perf_counter()
            out = method(*args)
            sync()
            grammar_seconds[0] += time.perf_counter() - t0
            return out
        return wrapped

    engine = HFEngine(model, tok, stops, SamplingSettings(max_new_tokens=64), batch_size=len(prompts),
                      constrained=True)
    for (cls, name), method in zip(timed_methods, originals):
        setattr(cls, name, timed(method))
    try:
        sync()
        start = time.perf_counter()
        answers = engine.generate(prompts, schemas)
        sync()
        seconds = time.perf_counter() - start
    finally:
        for (cls, name), method in zip(timed_methods, originals):
            setattr(cls, name, method)
    for answer in answers:
        json.loads(answer.text)
    figures["constrained_answers_parse"] = f"{len(answers)}/{len(answers)}"
    figures["constrained_grammar_share"] = round(grammar_seconds[0] / seconds, 3)
    figures["constrained_tokens_per_s"] = round(sum(g.num_tokens for g in answers) / seconds, 1)


def train(model_dir: str, train_file: Path, out: Path, *extra: str, launcher=None, env=None) -> None:
    cmd = (launcher or [sys.executable]) + [
        "src/finetune.py", "--do_train", "--overwrite_output_dir", "--model_name_or_path", model_dir, "--template",
        TEMPLATE, "--train_file", str(train_file), "--output_dir", str(out), "--per_device_train_batch_size", "2",
        "--max_steps", "5", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
        "--cutoff_len", "512", *extra]
    run(cmd, env)
    assert (out / "trainer_state.json").is_file(), f"{out}: no trainer_state.json"


def run(cmd: list[str], env=None) -> None:
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if res.returncode != 0:
        raise AssertionError(f"exit {res.returncode}: {' '.join(cmd[:4])} ...\n{res.stderr[-3000:]}")


def infer_with_adapter(model_dir: str, adapter: Path, test_file: Path, out: Path, *extra: str) -> None:
    run([sys.executable, "src/inference.py", "--model_name_or_path", model_dir, "--checkpoint_dir", str(adapter),
         "--template", TEMPLATE, "--input_file", str(test_file), "--output_file", str(out), "--max_new_tokens", "24",
         "--constrained_decoding", *extra])
    answers = read_jsonl(out)
    assert len(answers) == len(read_jsonl(test_file)), "not one answer per record"
    for a in answers:
        json.loads(a["output"])


def torchrun(port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={port}"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="rehearse the CPU-possible steps")
    parser.add_argument("--out", default=None, help="folder for gpu_check.json (default: a temporary one)")
    parser.add_argument("--hidden_size", type=int, default=None, help="default 256 (64 with --cpu)")
    args = parser.parse_args(argv)
    from instructkgc.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="gpu_check."))
    out_dir = Path(args.out) if args.out else work
    out_dir.mkdir(parents=True, exist_ok=True)
    hidden = args.hidden_size or (64 if args.cpu else 256)
    model_dir = build_tiny_model(work / "tiny", arch="llama", hidden_size=hidden)
    test_file = convert("NER", "test", work / "test.json")
    if args.cpu:  # a third of the records: the rehearsal runs in the test suite
        lines = test_file.read_text(encoding="utf-8").splitlines(keepends=True)
        test_file.write_text("".join(lines[:12]), encoding="utf-8")
    train_file = convert("NER", "train", work / "train.json")
    precision = [] if args.cpu else ["--bf16"]
    figures: dict = {"device": "cpu" if args.cpu else "cuda", "hidden_size": hidden}
    steps = [
        ("infer", lambda: check_inference(model_dir, test_file, args.cpu, figures)),
        ("qlora", lambda: train(model_dir, train_file, work / "qlora", "--bits", "4", *precision)),
        ("qlora_gc", lambda: (train(model_dir, train_file, work / "qlora_gc", "--bits", "4",
                                    "--gradient_checkpointing", *precision),
                              infer_with_adapter(model_dir, work / "qlora_gc", test_file, work / "q.json",
                                                 "--bits", "4", *precision))),
        ("lora16", lambda: train(model_dir, train_file, work / "lora16", *precision)),
    ]
    if not args.cpu:
        port = 29600
        for config, extra in (("ds_config_bf16_stage2.json", []), ("ds_config_bf16_stage3.json",
                                                                  ["--finetuning_type", "full"])):
            for flag in ("--bf16", "--fp16"):
                port += 1
                name = f"ds_{config.split('_')[-1][:-5]}_{flag[2:]}"
                steps.append((name, lambda c=config, e=extra, f=flag, p=port, n=name: train(
                    model_dir, train_file, work / n, "--deepspeed", f"configs/{c}", f, *e, launcher=torchrun(p))))
        steps.append(("ngpu", lambda: run(["bash", "ft_scripts/fine_llama.bash", "--max_steps", "2",
                                           "--save_strategy", "no", "--do_eval", "false", "--report_to", "none"],
                                          env={"CUDA_VISIBLE_DEVICES": "0", "MODEL_PATH": model_dir,
                                               "TRAIN_FILE": str(train_file), "OUTPUT_DIR": str(work / "ngpu"),
                                               "MASTER_PORT": "29650"})))
    failed = []
    for name, step in steps:
        start = time.perf_counter()
        try:
            step()
        except Exception as exc:  # noqa: BLE001  (a failed step is reported, the others still run)
            failed.append(name)
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
        else:
            print(f"PASS {name} ({time.perf_counter() - start:.1f} s)", flush=True)
    figures["failed"] = failed
    (out_dir / "gpu_check.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(figures), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
