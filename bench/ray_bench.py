"""Ray benchmark: ``instructkgc extract --ray`` with 1 worker vs 2 workers, same documents, one run.

    python bench/ray_bench.py                  # tiny random model (built on the fly)
    python bench/ray_bench.py --model smollm2  # SmolLM2-135M-Instruct (make demo caches it)

One local Ray session with one CPU per worker (``--cpus``, default 2); every worker has one torch thread.
Each worker count extracts ``--docs`` documents and, to cancel the start-up (worker processes, model load),
a quarter of them: documents/s = (docs - docs/4) / (time(docs) - time(docs/4)). Prints both rates, the
machine load, checks the outputs of 1 and 2 workers are identical, and last:
``ray: 2 workers are <X>x faster than 1 (documents/s, start-up excluded; identical output: yes)``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ["Barack Obama was born in Hawaii and worked in Washington for the government.",
             "Alice moved from Paris to Berlin, where she joined Siemens as an engineer.",
             "张三在北京大学读书，后来去上海的一家银行工作。",
             "The Louvre in Paris hosted an exhibition organised by the British Museum."]


def documents(n: int) -> str:
    return "\n".join(f"Document {i}. " + " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(2))
                     for i in range(n)) + "\n"


def extract(model: str, src: Path, out: Path, workers: int, max_new_tokens: int) -> float:
    from instructkgc.cli import main

    argv = ["extract", "--task", "NER", "--schema", '["person", "location", "organization"]', "--input", str(src),
            "--output", str(out), "--model_name_or_path", model, "--max_new_tokens", str(max_new_tokens),
            "--batch_size", "8", "--keep_ungrounded", "--ray", "--num_workers", str(workers)]
    start = time.perf_counter()
    assert main(argv) == 0
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder, or smollm2 (default: the tiny random model)")
    p.add_argument("--docs", type=int, default=None, help="documents (default: tiny 256, others 48)")
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--cpus", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.model is None:
            from instructkgc.tiny_model import build_tiny_model

            model = str(build_tiny_model(tmp / "tiny", arch="llama"))
        elif args.model == "smollm2":
            from instructkgc.smollm import smollm2_path

            model = str(smollm2_path())
        else:
            model = args.model
        n = args.docs or (256 if args.model is None else 48)
        small, big = tmp / "small.txt", tmp / "big.txt"
        small.write_text(documents(n // 4), encoding="utf-8")
        big.write_text(documents(n), encoding="utf-8")
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        load = [os.getloadavg()[0]]
        rates = {}
        for workers in (1, 2):
            t_small = extract(model, small, tmp / f"small{workers}.jsonl", workers, args.max_new_tokens)
            t_big = extract(model, big, tmp / f"big{workers}.jsonl", workers, args.max_new_tokens)
            rates[workers] = (n - n // 4) / (t_big - t_small) if t_big > t_small else float("nan")
            print(f"ray: {workers} worker(s): {n // 4} documents in {t_small:.1f} s, {n} in {t_big:.1f} s: "
                  f"{rates[workers]:.2f} documents/s", file=sys.stderr)
            load.append(os.getloadavg()[0])
        ray.shutdown()
        same = (tmp / "big1.jsonl").read_bytes() == (tmp / "big2.jsonl").read_bytes()
    print(f"ray: model {args.model or 'tiny'}, {n} documents, machine load (1-min average) "
          f"{' -> '.join(f'{x:.1f}' for x in load)} on {os.cpu_count()} cores")
    if any(r != r for r in rates.values()):  # nan: the larger run was not slower, start-up noise dominates
        print(f"ray: no ratio: the machine's load swamped the difference between {n // 4} and {n} documents "
              f"(re-run on a quiet machine or with more --docs; identical output: {'yes' if same else 'NO'})")
    else:
        print(f"ray: 2 workers are {rates[2] / rates[1]:.2f}x faster than 1 (documents/s, start-up excluded; "
              f"identical output: {'yes' if same else 'NO'})")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
