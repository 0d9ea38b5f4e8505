"""Training throughput: padded DataCollatorForSeq2Seq (the original) vs this project's packing collator, packing
with the loss from the answer positions' logits only (``instructkgc.answer_loss``), and one row per batch with the
examples' shared prompt prefix computed once (``instructkgc.shared_prefix``) + answer logits, what finetune.py does.

Trains a model (the tiny one built on the fly, or ``--model DIR``) on instruction records (converted from the
bundled data/*/sample.json, or ``--train_file``) for a fixed number of steps, the same batches in the same order
each way, and prints useful tokens (the examples' own tokens) per second, the final loss of each, and the ratios.
Runs alternate (A B C D A B C D) to even out machine noise.
Usage: python bench/train_bench.py [--steps 30] [--batch_size 8] [--template alpaca] [--model DIR --train_file F]
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def converted_records(workdir: Path) -> list[dict]:
    """Train records from every data/<TASK>/sample*.json via convert_func (both languages)."""
    records = []
    for schema in sorted(REPO.glob("data/*/schema*.json")):
        task, suffix = schema.parent.name, schema.stem[len("schema"):]
        sample = schema.parent / f"sample{suffix}.json"
        if not sample.is_file():
            continue
        out = workdir / f"{task}{suffix}.json"
        cmd = [sys.executable, str(REPO / "ie2instruction/convert_func.py"), "--src_path", str(sample), "--tgt_path",
               str(out), "--schema_path", str(schema), "--task", task, "--split", "train", "--split_num", "4",
               "--language", "en" if suffix else "zh"]
        if subprocess.run(cmd, capture_output=True, text=True).returncode == 0 and out.is_file():
            records += [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    return records


def run_mode(model_dir, dataset, batches, collate, answer_only=False, lora_r=0, seed=0, cutoff_len=512):
    from transformers import AutoModelForCausalLM

    from instructkgc import shared_prefix
    from instructkgc.answer_loss import answer_loss, answer_positions

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if lora_r:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear"))
    if isinstance(collate, shared_prefix.SharedPrefixCollator) and not shared_prefix.enable(model, cutoff_len):
        sys.exit("shared-prefix rows need a transformers model on SDPA attention")
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3 if lora_r else 3e-3)
    useful, computed, elapsed, losses = 0, 0, 0.0, []
    for idx in batches:
        feats = [dataset[i] for i in idx]
        batch = collate(feats)
        start = time.perf_counter()
        if answer_only:
            labels = batch.pop("labels")
            positions = answer_positions(labels)
            loss = answer_loss(model(**batch, logits_to_keep=positions).logits, labels, positions)
        else:
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        elapsed += time.perf_counter() - start
        useful += sum(len(f["input_ids"]) for f in feats)
        computed += batch["input_ids"].numel()
        losses.append(loss.item())
    return useful / elapsed, sum(losses[-5:]) / len(losses[-5:]), useful / computed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--template", default="alpaca")
    parser.add_argument("--cutoff_len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", help="a local HF causal LM (default: the tiny model, built on the fly)")
    parser.add_argument("--train_file", help="converted instruction records (default: the bundled samples)")
    parser.add_argument("--lora_r", type=int, default=0, help="LoRA rank on all linear layers (0: full training)")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    from instructkgc.args import DataArguments
    from instructkgc.data import PackingCollator, load_records, preprocess_supervised
    from instructkgc.shared_prefix import SharedPrefixCollator
    from instructkgc.template import get_template
    from instructkgc.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model or build_tiny_model(tmp / "model")
        records = load_records(args.train_file) if args.train_file else converted_records(tmp)
        if not records:
            sys.exit("no records converted from data/*/sample*.json")
        tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        data_args = DataArguments(template=args.template, cutoff_len=args.cutoff_len)
        dataset = preprocess_supervised(records, tok, data_args, get_template(args.template).fix_tokenizer(tok))
        rng = random.Random(0)
        order = [i for _ in range(args.steps * args.batch_size // len(dataset) + 1)
                 for i in rng.sample(range(len(dataset)), len(dataset))]
        batches = [order[i * args.batch_size:(i + 1) * args.batch_size] for i in range(args.steps)]
        lengths = [len(x) for x in dataset["input_ids"]]
        answers = [sum(label != -100 for label in x) for x in dataset["labels"]]
        print(f"{len(records)} records, {len(dataset)} examples, tokens/example min {min(lengths)} mean "
              f"{sum(lengths) / len(lengths):.0f} max {max(lengths)}, answer tokens "
              f"{sum(answers) / sum(lengths):.1%}; {args.steps} steps of {args.batch_size}"
              f"{f', LoRA r={args.lora_r}' if args.lora_r else ', full training'}")
        padded = DataCollatorForSeq2Seq(tok, pad_to_multiple_of=4, label_pad_token_id=-100)
        packed = PackingCollator(pad_token_id=tok.pad_token_id)
        modes = (("padded", padded, False), ("packed", packed, False), ("packed+answer logits", packed, True),
                 ("shared prefix+answer logits", SharedPrefixCollator(), True))
        results = {name: [] for name, _, _ in modes}
        for _ in range(args.repeats):
            for name, collate, answer_only in modes:
                results[name].append(run_mode(model_dir, dataset, batches, collate, answer_only, args.lora_r,
                                              cutoff_len=args.cutoff_len))
        best = {name: (max(r[0] for r in runs), runs[-1][1], runs[-1][2]) for name, runs in results.items()}
        for name, (tps, loss, share) in best.items():
            print(f"{name:28s}: {tps:9.0f} useful tokens/s, {1 / share:.2f} positions computed per example token, "
                  f"final loss {loss:.4f}")
        for name in ("packed", "packed+answer logits", "shared prefix+answer logits"):
            diff = abs(best[name][1] - best["padded"][1]) / best["padded"][1] * 100
            print(f"{name}: {best[name][0] / best['padded'][0]:.2f}x useful tokens/s vs padded baseline, "
                  f"final loss {diff:.2f}% from it")
        print(f"answer logits: {best['packed+answer logits'][0] / best['packed'][0]:.2f}x useful tokens/s vs "
              f"packed")
        print(f"shared prefix: {best['shared prefix+answer logits'][0] / best['packed+answer logits'][0]:.2f}x "
              f"useful tokens/s vs packed+answer logits")


if __name__ == "__main__":
    main()
