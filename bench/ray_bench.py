"""Ray benchmark: the ``--ray`` path with 1 worker vs 2 workers, same input, pools warmed up, one run.

    python bench/ray_bench.py                          # tiny random model, extract: documents/s
    python bench/ray_bench.py --command inference      # tiny random model, converted records: records/s
    python bench/ray_bench.py --model smollm2 --items 96   # SmolLM2-135M-Instruct (make demo caches it)

One local Ray session (``ray.init(num_cpus=2)``, ``--cpus``) serves both runs; every worker has one CPU and
one torch thread. Each run is the real command (``instructkgc extract --ray`` or ``src/inference.py --ray``)
with ``--num_workers`` 1, then 2, on the same input. Start-up is kept out of the timed part: each worker
loads the model and answers a warm-up batch (the first ``--batch_size`` items, answers thrown away) before it
reports ready, and Ray Data is told to start no block before the whole pool is ready. Timed: from the first
block's start to the moment every ordered output line is back on the driver (the Ray path itself: blocks,
actor pool, shards, ordering); the final file writing (for extract: resolution and the output format) is
reported separately. Printed for each pool: start-up, timed seconds, items/s, the driver's CPU seconds; for each
worker its blocks, busy and CPU seconds, and how long it waited (before and between blocks, and at the end while
the other finished); where the machine's CPU went in the timed part (workers' blocks, the rest of this Ray
session: driver, Ray's own processes, actor threads; other processes). Then whether both runs wrote the same
lines, the load average, and last: ``ray: 2 workers <X>x 1 worker (<k>/<n> identical)``. Measure on an idle
machine: the CPU lines show how much of it other processes took.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ["Barack Obama was born in Hawaii and worked in Washington for the government.",
             "Alice moved from Paris to Berlin, where she joined Siemens as an engineer.",
             "张三在北京大学读书，后来去上海的一家银行工作。",
             "The Louvre in Paris hosted an exhibition organised by the British Museum.",
             "Marie Curie worked at the University of Paris and was born in Warsaw.",
             "李四是清华大学的教授，出生在杭州。"]
TIMING = "ray_bench:"  # prefix of the timing counts the workers add to their block counts


def documents(n: int) -> str:
    """``n`` documents, one per line, of two or three sentences each."""
    return "".join(f"Document {i}. " + " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(2 + i % 2))
                   + "\n" for i in range(n))


def records(n: int, out: Path) -> None:
    """``n`` converted NER test records (the sample data, repeated) in ``out``."""
    src = out.with_suffix(".converted.json")
    subprocess.run([sys.executable, str(REPO / "ie2instruction/convert_func.py"), "--src_path",
                    str(REPO / "data/NER/sample.json"), "--tgt_path", str(src), "--schema_path",
                    str(REPO / "data/NER/schema.json"), "--task", "NER", "--split", "test", "--split_num", "6"],
                   check=True, capture_output=True)
    lines = src.read_text(encoding="utf-8").splitlines()
    out.write_text("".join(lines[k % len(lines)] + "\n" for k in range(n)), encoding="utf-8")


def make_timed_job():
    """The job wrapper the workers run (defined here so that Ray pickles it by value with this script)."""
    from instructkgc import distributed

    @dataclass
    class TimedJob(distributed.Job):
        """``job`` plus a warm-up batch in ``load`` and per-block timings in the counts (one key per block,
        so that summing the counts of all blocks keeps each value)."""

        job: distributed.Job
        warmup: list

        def fingerprint(self):
            return self.job.fingerprint()

        def block_rows(self):
            return self.job.block_rows()

        def load(self):
            state = self.job.load()
            self.job.process(state, self.warmup)  # first-batch costs (allocations, grammar compilation)
            return state

        def process(self, state, items):
            start, cpu = time.time(), time.process_time()
            counts, lines = self.job.process(state, items)
            tag = f"{TIMING}{os.getpid()}:{start!r}"
            counts = {**counts, f"{tag}:start": start, f"{tag}:end": time.time(),
                      f"{tag}:cpu": time.process_time() - cpu}
            return counts, lines

        def close(self, state):
            self.job.close(state)

    return TimedJob


class CPUSampler:
    """Samples, every ``period`` s, the CPU-seconds used so far by the whole machine (``/proc/stat``) and by
    this process with all its descendants (the local Ray session: its own processes and the workers), so that
    both can be read for a time window afterwards."""

    def __init__(self, period: float = 0.5):
        import psutil

        self.psutil, self.me = psutil, psutil.Process()
        self.samples: list[tuple[float, float, float]] = []
        self.stop = threading.Event()
        self.period, self.tick = period, os.sysconf("SC_CLK_TCK")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _machine(self) -> float:
        try:
            with open("/proc/stat") as f:
                user, nice, system, idle, iowait, irq, softirq = (int(x) for x in f.readline().split()[1:8])
        except OSError:
            return float("nan")
        return (user + nice + system + irq + softirq) / self.tick

    def _tree(self) -> float:
        total = 0.0
        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except self.psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.time(), self._machine(), self._tree()))
            self.stop.wait(self.period)

    def between(self, start: float, end: float) -> tuple[float, float]:
        """CPU-seconds of (the whole machine, this process tree) from ``start`` to ``end`` (interpolated)."""
        def at(t, i):
            s = self.samples
            for a, b in zip(s, s[1:]):
                if a[0] <= t <= b[0]:
                    return a[i] + (b[i] - a[i]) * (t - a[0]) / max(b[0] - a[0], 1e-9)
            return s[-1][i] if t > s[-1][0] else s[0][i]

        return at(end, 1) - at(start, 1), at(end, 2) - at(start, 2)


class Timer:
    """Replaces ``distributed.run`` for one command: wraps the job, times the run, strips the timings."""

    def __init__(self, warmup_items: int, sampler: CPUSampler):
        from instructkgc import distributed

        self.sampler = sampler
        self.distributed, self.real_run = distributed, distributed.run
        self.warmup_items, self.TimedJob = warmup_items, make_timed_job()
        self.result: dict = {}

    def __enter__(self):
        self.distributed.run = self.run
        return self

    def __exit__(self, *exc):
        self.distributed.run = self.real_run

    def run(self, job, items, ray_args, output, write):
        job = self.TimedJob(job, [item for _, item in items[:self.warmup_items]])
        called = time.time()
        driver = os.times()
        wrote = {}

        def timed_write(lines):
            wrote["start"] = time.time()
            wrote["cpu"] = sum(os.times()[:2]) - sum(driver[:2])
            write(lines)
            wrote["end"] = time.time()

        totals, reused = self.real_run(job, items, ray_args, output, timed_write)
        blocks: dict = {}  # (pid, block) -> {"start", "end", "cpu"}
        for key, value in totals.items():
            if key.startswith(TIMING):
                _, pid, block, what = key.split(":")
                blocks.setdefault((pid, block), {})[what] = value
        first, collected = min(b["start"] for b in blocks.values()), wrote["start"]
        workers: dict = {}
        for (pid, _), b in sorted(blocks.items(), key=lambda kv: kv[1]["start"]):
            w = workers.setdefault(pid, {"blocks": 0, "busy": 0.0, "cpu": 0.0, "idle": 0.0, "last": first})
            w["blocks"] += 1
            w["busy"] += b["end"] - b["start"]
            w["cpu"] += b["cpu"]
            w["idle"] += b["start"] - w["last"]  # waiting for its first block, then between blocks
            w["last"] = b["end"]
        for w in workers.values():
            w["tail"] = collected - w.pop("last")  # done, while the others finish and the lines come back
        self.result = {"items": len(items), "startup": first - called, "timed": collected - first,
                       "write": wrote["end"] - wrote["start"], "driver_cpu": wrote["cpu"], "workers": workers,
                       "cpu": self.sampler.between(first, collected)}
        return {k: v for k, v in totals.items() if not k.startswith(TIMING)}, reused


class _Identity:
    def __call__(self, batch):
        return batch


def warm_up_ray_data(ray) -> None:
    """Ray Data starts helper actors (statistics, autoscaling) on its first run: not in the first timed run."""
    ray.data.from_items([{"x": k} for k in range(8)]).map_batches(
        _Identity, compute=ray.data.ActorPoolStrategy(size=1), batch_size=2).take_all()


def model_dir(name: str | None, tmp: Path) -> str:
    if name is None:
        from instructkgc.tiny_model import build_tiny_model

        return str(build_tiny_model(tmp / "tiny", arch="llama"))
    from instructkgc.smollm import BUNDLED, bundled_path

    if name in BUNDLED:
        return str(bundled_path(name))
    return name


def command(args, model: str, src: Path, out: Path, workers: int) -> None:
    common = ["--model_name_or_path", model, "--max_new_tokens", str(args.max_new_tokens), "--batch_size",
              str(args.batch_size), "--ray", "--num_workers", str(workers)]
    if args.command == "extract":
        from instructkgc.cli import main

        argv = ["extract", "--task", "NER", "--schema", '["person", "location", "organization"]', "--input",
                str(src), "--output", str(out), "--keep_ungrounded", *common]
        if args.model is None:
            argv += ["--template", "llama2"]
        assert main(argv) == 0
    else:
        from instructkgc.inference import run

        run(["--input_file", str(src), "--output_file", str(out), "--template",
             "llama2" if args.model is None else "alpaca", *common])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--command", choices=["extract", "inference"], default="extract")
    p.add_argument("--model", default=None,
                   help="model folder, or smollm2 / gemma3-270m (default: the tiny random model)")
    p.add_argument("--items", type=int, default=None,
                   help="documents (extract) or records (inference) (default: tiny 2400 / 4800, others 96)")
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray session")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray

    n = args.items or (96 if args.model else 2400 if args.command == "extract" else 4800)
    unit = "documents" if args.command == "extract" else "records"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = model_dir(args.model, tmp)
        src = tmp / ("docs.txt" if args.command == "extract" else "records.json")
        if args.command == "extract":
            src.write_text(documents(n), encoding="utf-8")
        else:
            records(n, src)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ray.data.DataContext.get_current().wait_for_min_actors_s = 3600  # no block before the whole pool is up
        warm_up_ray_data(ray)
        print(f"ray: {args.command}, model {args.model or 'tiny'}, {n} {unit}, max_new_tokens {args.max_new_tokens}, "
              f"batch {args.batch_size}, {args.cpus} CPUs in the Ray session, {os.cpu_count()} cores")
        results, outputs, sampler = {}, {}, CPUSampler()
        for workers in (1, 2):
            out = tmp / f"out{workers}.jsonl"
            with Timer(args.batch_size, sampler) as timer:
                command(args, model, src, out, workers)
            r = results[workers] = timer.result
            outputs[workers] = out.read_text(encoding="utf-8").splitlines()
            print(f"{workers} worker{'s' if workers > 1 else ' '}: start-up {r['startup']:5.1f} s, timed "
                  f"{r['timed']:6.1f} s, {n / r['timed']:7.2f} {unit}/s, then output writing {r['write']:.1f} s; "
                  f"driver CPU {r['driver_cpu']:.1f} s")
            for pid, w in r["workers"].items():
                print(f"{'':11}worker {pid}: {w['blocks']} blocks, busy {w['busy']:.1f} s (CPU {w['cpu']:.1f} s), "
                      f"idle {w['idle']:.1f} s before and between blocks, {w['tail']:.1f} s at the end")
            machine, tree = r["cpu"]
            blocks = sum(w["cpu"] for w in r["workers"].values())
            print(f"{'':11}CPU-s in the timed part: whole machine {machine:.1f} of {os.cpu_count() * r['timed']:.1f}; "
                  f"this Ray session {tree:.1f}: workers' blocks {blocks:.1f}, the rest {tree - blocks:.1f} (driver, "
                  f"Ray's processes, actor threads); other processes {machine - tree:.1f}")
        ray.shutdown()
    one, two = outputs[1], outputs[2]
    same = sum(a == b for a, b in zip(one, two)) if len(one) == len(two) else 0
    print(f"identical output lines, 1 vs 2 workers: {same}/{len(one)}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (cores: {os.cpu_count()})")
    print(f"ray: 2 workers {results[1]['timed'] / results[2]['timed']:.2f}x 1 worker ({same}/{len(one)} identical)")
    if same != len(one):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
