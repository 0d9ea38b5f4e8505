"""Inference benchmark: the original's one-record-at-a-time loop vs the batched engine, same records.

    python bench/infer_bench.py                       # tiny random model (built on the fly)
    python bench/infer_bench.py --model smollm2       # SmolLM2-135M-Instruct (make demo caches it)
    python bench/infer_bench.py --model DIR --constrained_decoding

Prints the time of each, checks the greedy outputs are identical, optionally the constrained-decoding
overhead (time in the grammar processor; new tokens/s, batched, constrained vs free), and last:
``infer: batched is <X>x faster than one-at-a-time (<k>/<n> identical)``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from instructkgc.infer import SamplingSettings
from instructkgc.infer.hf_engine import HFEngine
from instructkgc.infer.records import answer_schema
from instructkgc.template import build_prompt_ids, get_template_and_fix_tokenizer, stop_token_ids

REPO = Path(__file__).resolve().parents[1]


def records(task: str, language: str, n: int) -> list[dict]:
    suffix = "_en" if language == "en" else ""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "test.json"
        subprocess.run([sys.executable, str(REPO / "ie2instruction/convert_func.py"), "--src_path",
                        str(REPO / "data" / task / f"sample{suffix}.json"), "--tgt_path", str(out), "--schema_path",
                        str(REPO / "data" / task / f"schema{suffix}.json"), "--task", task, "--split", "test",
                        "--split_num", "4", "--language", language], check=True, capture_output=True)
        recs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return (recs * (n // len(recs) + 1))[:n]


def model_dir(name: str | None, tmp: str) -> str:
    if name is None:
        from instructkgc.tiny_model import build_tiny_model

        return str(build_tiny_model(Path(tmp) / "tiny", arch="llama"))
    if name == "smollm2":
        from instructkgc.smollm import smollm2_path

        return str(smollm2_path())
    return name


def one_at_a_time(model, tok, stops, prompts, max_new_tokens):
    """The original loop: batch 1, no padding, greedy."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                              pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stops[0])
    texts = []
    with torch.inference_mode():
        for p in prompts:
            out = model.generate(torch.tensor([p]), generation_config=config)[0, len(p):].tolist()
            end = next((k for k, t in enumerate(out) if t in stops), len(out))
            texts.append(tok.decode(out[:end], skip_special_tokens=True))
    return texts


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF model folder, or 'smollm2' (default: tiny random model)")
    parser.add_argument("--template", default=None, help="default: llama2 (tiny) / alpaca (others)")
    parser.add_argument("--task", default="NER")
    parser.add_argument("--language", default=None, help="zh (tiny) / en (others)")
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--constrained_decoding", action="store_true", help="also measure its overhead")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = model_dir(args.model, tmp)
        template_name = args.template or ("llama2" if args.model is None else "alpaca")
        language = args.language or ("zh" if args.model is None else "en")
        tok = AutoTokenizer.from_pretrained(path)
        template = get_template_and_fix_tokenizer(template_name, tok)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    recs = records(args.task, language, args.records)
    prompts = [build_prompt_ids(template, tok, r, 1024)[0] for r in recs]
    stops = stop_token_ids(template, tok)
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens)
    print(f"model {args.model or 'tiny'}: {len(prompts)} {args.task} records, template {template_name}, "
          f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, {torch.get_num_threads()} threads")
    engine = HFEngine(model, tok, stops, settings, batch_size=args.batch_size)
    engine.generate(prompts[:2])  # warm-up
    single, t_single = timed(lambda: one_at_a_time(model, tok, stops, prompts, args.max_new_tokens))
    batched, t_batched = timed(lambda: engine.generate(prompts))
    same = sum(a == b.text for a, b in zip(single, batched))
    tokens = sum(g.num_tokens for g in batched)
    print(f"one-at-a-time: {t_single:.2f}s ({len(prompts) / t_single:.2f} rec/s)")
    print(f"batched:       {t_batched:.2f}s ({len(prompts) / t_batched:.2f} rec/s, {tokens / t_batched:.1f} tok/s)")
    if args.constrained_decoding:
        from instructkgc.infer import constrained as grammar

        cengine = HFEngine(model, tok, stops, settings, batch_size=args.batch_size, constrained=True)
        schemas = [answer_schema(r) for r in recs]
        cengine.generate(prompts[:2], schemas[:2])  # warm-up (grammar compilation is cached)
        spent = [0.0, 0]  # seconds inside the grammar processor, decoding steps
        call = grammar.JsonSchemaProcessor.__call__

        def timed_call(self, input_ids, scores):
            start = time.perf_counter()
            try:
                return call(self, input_ids, scores)
            finally:
                spent[0] += time.perf_counter() - start
                spent[1] += 1

        grammar.JsonSchemaProcessor.__call__ = timed_call
        constrained, t_con = timed(lambda: cengine.generate(prompts, schemas))
        grammar.JsonSchemaProcessor.__call__ = call
        ctokens = sum(g.num_tokens for g in constrained)
        parsed = 0
        for g in constrained:
            try:
                json.loads(g.text)
                parsed += 1
            except ValueError:
                pass
        free_rate, con_rate = tokens / t_batched, ctokens / t_con
        print(f"constrained:   {t_con:.2f}s ({len(prompts) / t_con:.2f} rec/s, {con_rate:.1f} tok/s); "
              f"{parsed}/{len(prompts)} answers parse (free: "
              f"{sum(1 for g in batched if _parses(g.text))}/{len(prompts)})")
        # Rows that finish early idle in their batch, so tokens/s also drops with answers of unequal length; the
        # cost of the constraint itself is the time spent in the grammar processor.
        print(f"constrained decoding overhead: {100 * spent[0] / (t_con - spent[0]):.1f}% (grammar processor "
              f"{spent[0]:.2f}s over {spent[1]} decoding steps); tokens/s {100 * (con_rate / free_rate - 1):+.1f}%")
    print(f"infer: batched is {t_single / t_batched:.1f}x faster than one-at-a-time ({same}/{len(prompts)} identical)")


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    main()
