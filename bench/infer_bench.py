"""Inference benchmark: one record at a time vs static batches vs the HF engine's greedy loop, same records.

    python bench/infer_bench.py                       # tiny random model (built on the fly)
    python bench/infer_bench.py --model smollm2       # SmolLM2-135M-Instruct (make demo caches it)
    python bench/infer_bench.py --model smollm2 --constrained_decoding      # grounded, as inference runs it
    python bench/infer_bench.py --model smollm2 --constrained_decoding --grounded_decoding off
    python bench/infer_bench.py --model smollm2 --constrained_decoding --skip_single --compile   # + torch.compile A/B
    python bench/infer_bench.py --model smollm2 --constrained_decoding --skip_single --group_rows_ab 2,8,16 \
        --dataset ../shared/benchmarks/crossner_politics --records 48    # real texts; attention group sizes A/B

Side by side in one run, all greedy, with the same settings: ``generate`` one record at a time (the original's
loop), ``generate`` in static length-sorted batches (the engine before continuous batching), and the engine's
greedy loop (continuous batching, shared-prefix reuse, lookup drafts, jump-forward decoding with
``--constrained_decoding``). For each: seconds, records/s, new tokens/s, and achieved GFLOP/s (matrix products of
the model's decoder layers: 2 x their weights x token positions computed, padding included; attention and the
output layer left out) as a share of the peak of a large matmul in the run's dtype, measured in the same run. The
records are the repository's sample records of ``--task``, repeated, or with ``--dataset`` the first ``--records``
instructions converted (with its ``schema.json``) from a benchmark folder's ``test.json``. Then,
for the new loop: the shares of answer tokens forced by the grammar and kept from lookup drafts (and how many
drafted tokens were kept), of those chosen from the logits of the allowed tokens only, the time spent choosing
tokens (grammar masks, closing policy, the output layer's rows for them); the rate of the decoder's matrix products
run alone at the new engine's mean positions per pass (what these cores give products of that size) and the share
of its time they would take at that rate; whether the answers are identical, the load average,
with ``--compile``, the new engine again with ``torch.compile`` on each decoder layer's MLP and norms, against
itself without, and with ``--group_rows_ab``, against the same engine with other numbers of answers per attention
group (``--batch_size`` or more: one group), alternating twice; and last:
``infer: new engine <X>x static batches, <Y>x one-at-a-time (<k>/<n> identical)``. ``--new_engine_dtype
bfloat16`` runs the new engine on a bf16 copy of the model against the others in ``--dtype`` (its answers are then
compared across precisions).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from instructkgc.infer import SamplingSettings, greedy
from instructkgc.infer.greedy import GreedyLoop
from instructkgc.infer.hf_engine import HFEngine
from instructkgc.infer.records import answer_schema
from instructkgc.template import build_prompt_ids, get_template_and_fix_tokenizer, stop_token_ids

REPO = Path(__file__).resolve().parents[1]


def records(task: str, language: str, n: int, dataset: Path | None = None) -> list[dict]:
    """``n`` converted test records: of the repository's samples of ``task`` (repeated), or the first ones of
    ``dataset``'s ``test.json`` (a benchmark folder, converted with its ``schema.json``; a text gives one record per
    schema chunk, so its first ``n`` texts are enough)."""
    suffix = "_en" if language == "en" else ""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "test.json"
        if dataset is None:
            source, schema = REPO / "data" / task / f"sample{suffix}.json", REPO / "data" / task / f"schema{suffix}.json"
        else:
            source, schema = Path(tmp) / "source.json", dataset / "schema.json"
            with open(dataset / "test.json", encoding="utf-8") as f:
                source.write_text("".join(line for _, line in zip(range(n), f)), encoding="utf-8")
        subprocess.run([sys.executable, str(REPO / "ie2instruction/convert_func.py"), "--src_path", str(source),
                        "--tgt_path", str(out), "--schema_path", str(schema), "--task", task, "--split", "test",
                        "--split_num", "4", "--language", language], check=True, capture_output=True)
        recs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return (recs * (n // len(recs) + 1))[:n]


def model_dir(name: str | None, tmp: str) -> str:
    if name is None:
        from instructkgc.tiny_model import build_tiny_model

        return str(build_tiny_model(Path(tmp) / "tiny", arch="llama"))
    from instructkgc.smollm import BUNDLED, bundled_path

    if name in BUNDLED:
        return str(bundled_path(name))
    return name


def peak_gflops(size: int = 2048, repeats: int = 4, dtype=torch.float32) -> float:
    """Best matmul rate of this machine right now (same threads as the runs)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def products_alone(model, rows: int, repeats: int = 3) -> float:
    """GFLOP/s of the decoder layers' matrix products run alone, one after another, on ``rows`` token positions:
    what these cores give a pass of that many positions (each pass streams every weight from memory once)."""
    weights = [m.weight for m in model.get_decoder().modules() if isinstance(m, torch.nn.Linear)]
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype) for w in weights}
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first one warms up
            start = time.perf_counter()
            for w in weights:
                torch.nn.functional.linear(inputs[w.shape[1]], w)
            best = min(best, time.perf_counter() - start)
    return 2 * rows * sum(w.numel() for w in weights) / best / 1e9


class FlopCounter:
    """Counts the token positions the model's decoder computes (a forward pre-hook on it). The output layer is not
    counted: how much of it runs differs by engine (the new one scores only the tokens a grammar allows), and a
    hook on it would make the new engine compute it whole."""

    def __init__(self, model):
        embed = model.get_input_embeddings()
        head = model.get_output_embeddings()
        tied = head.weight is embed.weight
        params = sum(p.numel() for p in model.parameters())
        self.body = params - embed.weight.numel() - (0 if tied else head.weight.numel())
        self.positions = 0
        model.get_decoder().register_forward_pre_hook(self._count_positions, with_kwargs=True)

    def _count_positions(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.positions += ids.numel()

    def flops(self) -> float:
        return 2.0 * self.body * self.positions

    def reset(self) -> None:
        self.positions = 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="HF model folder, or smollm2 / gemma3-270m (default: tiny random model)")
    parser.add_argument("--template", default=None, help="default: llama2 (tiny) / alpaca (others)")
    parser.add_argument("--task", default="NER")
    parser.add_argument("--language", default=None, help="zh (tiny) / en (others)")
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--dataset", type=Path,
                        help="benchmark folder (test.json, schema.json): the first --records instructions of its "
                             "texts instead of the samples")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--constrained_decoding", action="store_true", help="all three runs JSON-constrained")
    parser.add_argument("--grounded_decoding", choices=["on", "off"], default="on",
                        help="with --constrained_decoding: strings must be spans of the input (inference's default)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--new_engine_dtype", choices=["float32", "bfloat16"],
                        help="the new engine's dtype when it differs from --dtype (a second copy of the model), e.g. "
                             "bf16 against today's engines in fp32")
    parser.add_argument("--skip_single", action="store_true", help="leave out the (slow) one-at-a-time run")
    parser.add_argument("--compile", action="store_true",
                        help="also time the new engine with torch.compile on each layer's MLP and norms")
    parser.add_argument("--group_rows_ab", type=lambda text: [int(n) for n in text.split(",")], default=[],
                        help="comma-separated answers per attention group to time the new engine with as well "
                             f"(default {greedy.GROUP_ROWS}; --batch_size: one group)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = model_dir(args.model, tmp)
        template_name = args.template or ("llama2" if args.model is None else "alpaca")
        language = args.language or ("zh" if args.model is None else "en")
        tok = AutoTokenizer.from_pretrained(path)
        template = get_template_and_fix_tokenizer(template_name, tok)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).eval()
        new_dtype = args.new_engine_dtype or args.dtype
        new_model = model if new_dtype == args.dtype else AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, new_dtype)).eval()
    recs = records(args.task, language, args.records, args.dataset)
    prompts = [build_prompt_ids(template, tok, r, 1024)[0] for r in recs]
    grounded = args.grounded_decoding == "on"
    schemas = [answer_schema(r, grounded=grounded) for r in recs] if args.constrained_decoding else None
    stops = stop_token_ids(template, tok)
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens)
    print(f"model {args.model or 'tiny'}: {len(prompts)} {args.task} records, template {template_name}, "
          f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, constrained decoding "
          f"{('on, grounded ' + args.grounded_decoding) if schemas else 'off'}, {args.dtype}"
          f"{'' if new_model is model else f' (new engine {new_dtype})'}, {torch.get_num_threads()} threads")
    counter = FlopCounter(model)
    new_counter = counter if new_model is model else FlopCounter(new_model)
    peaks = {dtype: peak_gflops(dtype=getattr(torch, dtype)) for dtype in dict.fromkeys((args.dtype, new_dtype))}
    for dtype, peak in peaks.items():
        print(f"peak: {peak:.1f} GFLOP/s ({dtype} 2048x2048 matmul)")

    def engine(m=model, **options):
        return HFEngine(m, tok, stops, settings, constrained=schemas is not None, **options)

    new = engine(new_model, batch_size=args.batch_size)
    runs = [("one-at-a-time", engine(batch_size=1, continuous=False)),
            ("static batches", engine(batch_size=args.batch_size, continuous=False)), ("new engine", new)]
    if args.skip_single:
        runs = runs[1:]
    for _, e in runs:  # warm-up (and grammar compilation, cached by schema)
        e.generate(prompts[:2], schemas[:2] if schemas else None)
    new.loop.stats.__init__()
    choosing = [0.0]
    timed_methods = {name: getattr(GreedyLoop, name) for name in ("_choose", "_next_input")}

    def timer(method):
        def wrapped(*a):
            start = time.perf_counter()
            try:
                return method(*a)
            finally:
                choosing[0] += time.perf_counter() - start
        return wrapped

    results = {}
    for name, e in runs:
        run_counter, peak = (new_counter, peaks[new_dtype]) if e is new else (counter, peaks[args.dtype])
        run_counter.reset()
        if e is new:
            for method_name, method in timed_methods.items():
                setattr(GreedyLoop, method_name, timer(method))
        start = time.perf_counter()
        gens = e.generate(prompts, schemas)
        seconds = time.perf_counter() - start
        for method_name, method in timed_methods.items():
            setattr(GreedyLoop, method_name, method)
        results[name] = (gens, seconds)
        tokens = sum(g.num_tokens for g in gens)
        gflops = run_counter.flops() / seconds / 1e9
        parsed = sum(_parses(g.text) for g in gens)
        print(f"{name + ':':16}{seconds:8.2f}s  {len(prompts) / seconds:6.2f} rec/s  {tokens / seconds:7.1f} new tok/s"
              f"  {gflops:6.1f} GFLOP/s ({100 * gflops / peak:4.1f}% of peak)  {parsed}/{len(gens)} parse")
    stats = new.loop.stats
    print(f"new engine: {100 * stats.forced_share:.1f}% of {stats.new_tokens} answer tokens forced by the grammar "
          f"(jump-forward), {100 * stats.lookup_share:.1f}% from lookup drafts ({stats.lookup_tokens} of "
          f"{stats.drafted_tokens} proposed kept), "
          f"{100 * stats.narrow_tokens / max(stats.new_tokens, 1):.1f}% chosen from the logits of "
          f"the allowed tokens only, {stats.decode_passes} decoding passes, {stats.reused_tokens} of "
          f"{stats.reused_tokens + stats.prefill_tokens} prompt tokens taken from shared prefixes; choosing "
          f"tokens (grammar, closing policy, allowed tokens' logits) "
          f"{100 * choosing[0] / results['new engine'][1]:.1f}% of the time")
    rows = round(new_counter.positions / max(stats.decode_passes, 1))
    alone = products_alone(new_model, rows)
    at_rate = new_counter.flops() / alone / 1e9
    print(f"decoder products alone at the new engine's {rows} positions per pass: {alone:.1f} GFLOP/s "
          f"({100 * alone / peaks[new_dtype]:.1f}% of peak); at that rate its passes' products take {at_rate:.2f}s, "
          f"{100 * at_rate / results['new engine'][1]:.0f}% of its time")
    reference = results["one-at-a-time" if "one-at-a-time" in results else "static batches"][0]
    same = {name: sum(a.text == b.text for a, b in zip(reference, gens)) for name, (gens, _) in results.items()}
    print("identical to " + ("one-at-a-time" if "one-at-a-time" in results else "static batches") + ": "
          + ", ".join(f"{name} {k}/{len(prompts)}" for name, k in same.items()))
    texts = [g.text for g in results["new engine"][0]]
    if args.compile:
        compile_ab(new_model, lambda: new.generate(prompts, schemas), texts)
    if args.group_rows_ab:
        default, variants = greedy.GROUP_ROWS, {f"groups of {greedy.GROUP_ROWS}": new}
        for rows in args.group_rows_ab:
            greedy.GROUP_ROWS = rows
            variants[f"groups of {rows}"] = engine(new_model, batch_size=args.batch_size)
        greedy.GROUP_ROWS = default
        alternate("attention group sizes A/B (new engine)",
                  {name: partial(e.generate, prompts, schemas) for name, e in variants.items()}, texts)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (cores: {os.cpu_count()})")
    t_new, t_static = results["new engine"][1], results["static batches"][1]
    line = f"infer: new engine{'' if new_model is model else f' ({new_dtype})'} {t_static / t_new:.2f}x static batches"
    if "one-at-a-time" in results:
        line += f", {results['one-at-a-time'][1] / t_new:.1f}x one-at-a-time"
    print(line + f" ({same['new engine']}/{len(prompts)} identical)")


def compile_ab(model, generate, texts: list[str]) -> None:
    """The same generation with each decoder layer's MLP and norms plain and ``torch.compile``-d (inductor, dynamic
    shapes), alternating (:func:`alternate`) after a compiling run."""
    names = ("mlp", "input_layernorm", "post_attention_layernorm")
    layers = model.model.layers
    plain = [[getattr(layer, n) for n in names] for layer in layers]
    compiled = [[torch.compile(m, dynamic=True) for m in mods] for mods in plain]

    def use(modules):
        for layer, mods in zip(layers, modules):
            for n, m in zip(names, mods):
                setattr(layer, n, m)

    def with_modules(modules):
        def run():
            use(modules)
            return generate()
        return run

    use(compiled)
    start = time.perf_counter()
    generate()
    print(f"torch.compile: first (compiling) run {time.perf_counter() - start:.1f}s")
    alternate("torch.compile A/B (new engine)", {"plain": with_modules(plain), "compiled": with_modules(compiled)},
              texts)
    use(plain)


def alternate(title: str, variants: dict, texts: list[str], rounds: int = 2) -> None:
    """Time each of ``variants`` (name: a generation) in turn, ``rounds`` times in this process; print the seconds
    of each and how many answers of each are ``texts``."""
    seconds = {name: [] for name in variants}
    same = {}
    for _ in range(rounds):
        for name, generate in variants.items():
            start = time.perf_counter()
            gens = generate()
            seconds[name].append(time.perf_counter() - start)
            same[name] = sum(g.text == t for g, t in zip(gens, texts))
    print(f"{title}: " + ", ".join(f"{name} {' / '.join(f'{s:.2f}s' for s in runs)}" for name, runs in seconds.items())
          + "; answers identical " + ", ".join(f"{name} {same[name]}/{len(texts)}" for name in variants))


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    main()
