"""Cost of span-grounded decoding: grammar compile time per record and the share of a run spent in the grammar.

    python bench/grounded_bench.py --input_file benchmark_out/conll04/instructions/test_all_orders.json

Reads converted instruction records (any ``convert_func`` output), answers the first ``--records`` of them with
SmolLM2-135M-Instruct (or ``--model DIR``) through the HF engine with constrained decoding, grounding off and
on, side by side in one process, and prints per setting: the time compiling grammars (per record), the time in
the grammar processor per decoding step, and their share of the whole generation time.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from instructkgc.infer import SamplingSettings
from instructkgc.infer import constrained
from instructkgc.infer.hf_engine import HFEngine
from instructkgc.infer.records import answer_schema
from instructkgc.template import build_prompt_ids, get_template_and_fix_tokenizer, stop_token_ids


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input_file", required=True)
    p.add_argument("--model", help="local HF model folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--template", default="auto")
    p.add_argument("--records", type=int, default=48)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_new_tokens", type=int, default=96)
    args = p.parse_args(argv)
    if args.model is None:
        from instructkgc.smollm import smollm2_path

        args.model = str(smollm2_path())
    tok = AutoTokenizer.from_pretrained(args.model)
    template = get_template_and_fix_tokenizer(args.template, tok)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    with open(args.input_file, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()][:args.records]
    prompts = [build_prompt_ids(template, tok, r, 1024)[0] for r in records]
    engine = HFEngine(model, tok, stop_token_ids(template, tok), SamplingSettings(max_new_tokens=args.max_new_tokens),
                      batch_size=args.batch_size, constrained=True)
    engine.generate(prompts[:2], [answer_schema(r) for r in records[:2]])  # warm-up
    print(f"{len(records)} records, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, "
          f"{torch.get_num_threads()} threads")
    spent = {"compile": 0.0, "steps": 0.0, "n_steps": 0}
    grammar, call = constrained.GrammarCache.grammar, constrained.JsonSchemaProcessor.__call__

    def timed_grammar(self, schema):
        start = time.perf_counter()
        try:
            return grammar(self, schema)
        finally:
            spent["compile"] += time.perf_counter() - start

    def timed_call(self, input_ids, scores):
        start = time.perf_counter()
        try:
            return call(self, input_ids, scores)
        finally:
            spent["steps"] += time.perf_counter() - start
            spent["n_steps"] += 1

    constrained.GrammarCache.grammar, constrained.JsonSchemaProcessor.__call__ = timed_grammar, timed_call
    for grounded in (False, True):
        spent.update(compile=0.0, steps=0.0, n_steps=0)
        engine.grammars._grammars.clear()  # every grammar is compiled again, as in a fresh run
        schemas = [answer_schema(r, grounded=grounded) for r in records]
        start = time.perf_counter()
        gens = engine.generate(prompts, schemas)
        total = time.perf_counter() - start
        tokens = sum(g.num_tokens for g in gens)
        grammar_time = spent["compile"] + spent["steps"]
        print(f"grounded {'on ' if grounded else 'off'}: {total:.1f} s, {tokens} new tokens; grammar compile "
              f"{1000 * spent['compile'] / len(records):.1f} ms/record, processor "
              f"{1000 * spent['steps'] / max(spent['n_steps'], 1):.2f} ms/step ({spent['n_steps']} steps); "
              f"constrained-decoding share {100 * grammar_time / total:.1f}%")


if __name__ == "__main__":
    main()
