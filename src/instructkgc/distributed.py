"""Corpus scale on Ray Data (``--ray``): the single-process inference and extraction, data-parallel.

The driver reads and checks the whole input first (JSONL, a JSON array, Parquet or text, through the readers
of one process; bad input fails before Ray starts, with the same one-line messages) and hands the items still
to do to Ray Data, in blocks: at most ``Job.block_rows`` items, and at least ``BLOCKS_PER_WORKER`` blocks per
worker (16 in all), so that the workers finish within about a block of each other. An actor pool of
``--num_workers`` engines, each given ``--gpus_per_worker`` GPUs (or one CPU and one torch thread), runs every
block through the single-process code: prompts (``template.build_prompt_ids`` / the extractor's windows), the
engine from ``infer.build_engine`` (same stop ids, grammars and closing behaviour), then the answer lines
(``infer.records.answer_batch``) or the parsed, grounded and merged documents (``extract.pipeline.Extractor``).
Only finished lines travel back; the driver does no per-item work beyond appending them to the shard.

``src/inference.py --ray --backend vllm`` runs on Ray's own vLLM processor instead (``ray.data.llm``,
:class:`VLLMInferJob`): its engine stage takes per-row token prompts and per-row sampling parameters with
structured outputs, so each row carries what the single-process vLLM engine sends (prompt ids, stop ids,
budget, the answer's grammar, the LoRA adapter) and the ``vllm.LLM`` arguments become its ``engine_kwargs``;
the answers' token ids are closed and decoded by the same code. ``extract --ray --backend vllm`` keeps our
vLLM engine inside each worker: the extractor interleaves windowing, generation, parsing and merging per block,
which a processor's fixed preprocess -> engine -> postprocess stages cannot hold.

The driver appends each finished item to a shard file beside the output (``OUTPUT.parts/``, one file per run,
each line flushed and synced) as it streams in. A run that is killed leaves its shards; the same command run
again (same input and settings, checked by a fingerprint) skips every item they hold, so nothing is lost or
done twice. A block that fails is retried, on a restarted actor when the process died; an item still missing
at the end is reported by id (exit status 1, shards kept for the re-run). When nothing is missing the final
file is written in input order, in exactly the single-process format, and the shards are removed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional

from .utils import UsageError, get_logger

logger = get_logger(__name__)

EXTRA = "pip install 'instructkgc[ray]'"
RETRIES = 2  # per block: user errors retried in place, a dead worker restarted
CPUS_PER_WORKER = 1  # and as many torch threads when the worker has no GPU
MIN_BLOCKS = 16  # blocks a run is cut into at least (progress; the unit a crash can lose)
BLOCKS_PER_WORKER = 4  # and at least this many per worker: the workers finish within about a block of each other


@dataclass
class RayArguments:
    """The ``--ray`` flags of ``src/inference.py`` and ``instructkgc extract``."""

    ray: Optional[str] = field(default=None, metadata={
        "nargs": "?", "const": "local",
        "help": "Run on Ray: no value starts Ray on this machine, 'auto' joins the cluster started with "
                "`ray start`, or give its address (needs pip install 'instructkgc[ray]')."})
    num_workers: Optional[int] = field(default=None, metadata={
        "help": "--ray: engines run side by side (default: GPUs / --gpus_per_worker, or one per CPU)."})
    gpus_per_worker: Optional[float] = field(default=None, metadata={
        "help": "--ray: GPUs of each engine (default: 1 when the cluster has GPUs, else 0: one CPU); with "
                "--backend vllm it is the tensor-parallel size."})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The :class:`RayArguments` flags on an argparse parser (``instructkgc extract``)."""
    types = {"ray": str, "num_workers": int, "gpus_per_worker": float}
    for f in fields(RayArguments):
        parser.add_argument(f"--{f.name}", type=types[f.name], default=f.default, **f.metadata)


def require_ray():
    """Import ray and ray.data or raise a one-line UsageError naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(f"--ray needs Ray Data: {EXTRA}") from None
    return ray


def check(ray_args, output: Optional[str]) -> None:
    """Refuse unusable ``--ray`` settings (before any work)."""
    if output in (None, "-"):
        raise UsageError("--ray writes shards beside the output to resume from; give an output file, not stdout")
    if ray_args.num_workers is not None and ray_args.num_workers < 1:
        raise UsageError("--num_workers must be at least 1")
    if ray_args.gpus_per_worker is not None and ray_args.gpus_per_worker < 0:
        raise UsageError("--gpus_per_worker must be >= 0")
    require_ray()


class LostItems(Exception):
    """Items still missing after the retries; ``ids`` are their document ids (or record lines)."""

    def __init__(self, ids: list[str], cause: str):
        shown = ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
        super().__init__(f"{len(ids)} not done after {RETRIES} retries ({cause}): {shown}; the shards are kept, "
                         "run the same command again to do only these")
        self.ids = ids


# ---- jobs: what runs on the workers --------------------------------------------------------------------
class Job:
    """One command's settings and its worker side: ``load`` and ``process`` run on the workers (the job is
    pickled to them; the items are not, each block carries its own)."""

    def fingerprint(self) -> dict:
        """The settings the results depend on; shards of other settings (or input) are not reused."""
        raise NotImplementedError

    def block_rows(self) -> int:
        """Items per block at most (one engine call)."""
        raise NotImplementedError

    def load(self):
        """Worker state (the engine); built once per worker."""
        raise NotImplementedError

    def process(self, state, items: list[dict]) -> tuple[dict, list[str]]:
        """Counts over the block (numbers, summed over all blocks) and one output line per item, in order."""
        raise NotImplementedError

    def close(self, state) -> None:
        pass

    def dataset(self, ray, ds, workers: int, gpus: float, rows_per_block: int):
        """``ds`` (rows ``key``, ``item``) through the workers: rows ``key``, ``counts`` (JSON) and ``line``. Here:
        an actor pool of ``workers`` engines, each running whole blocks through :meth:`process`."""
        with warnings.catch_warnings():  # bounded restarts have no named parameter yet (Ray's default: forever)
            warnings.simplefilter("ignore", DeprecationWarning)
            return ds.map_batches(_Worker, fn_constructor_args=(self,), batch_size=rows_per_block,
                                  batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
                                  num_cpus=CPUS_PER_WORKER, num_gpus=gpus or None, max_restarts=RETRIES,
                                  max_task_retries=RETRIES)


@dataclass
class InferJob(Job):
    """``src/inference.py``: converted records in, the same records with ``output`` out."""

    model_args: object
    data_args: object
    finetuning_args: object
    generating_args: object
    infer_args: object

    def fingerprint(self) -> dict:
        drop = {"input_file", "output_file", "resume", "mode", *(f.name for f in fields(RayArguments))}
        return {"command": "inference", "compute_dtype": str(self.model_args.compute_dtype),
                **{name: {k: v for k, v in asdict(getattr(self, name)).items() if k not in drop}
                   for name in ("model_args", "data_args", "finetuning_args", "generating_args", "infer_args")}}

    def block_rows(self) -> int:
        return max(64, 8 * self.infer_args.batch_size)  # the single-process window

    def load(self):
        from .infer import build_engine

        return build_engine(self.model_args, self.data_args, self.finetuning_args, self.generating_args,
                            self.infer_args)

    def process(self, state, items):
        from .infer.records import Counts, answer_batch
        from .template import build_prompt_ids

        engine, tokenizer, template = state
        counts = Counts()
        lines = answer_batch(engine, lambda r: build_prompt_ids(template, tokenizer, r, self.data_args.cutoff_len),
                             [(item["line"], item["record"]) for item in items], self.infer_args.input_file,
                             self.infer_args.constrained_decoding, counts,
                             grounded=self.infer_args.grounded_decoding)
        return counts.as_dict(), lines

    def close(self, state):
        state[0].close()


@dataclass
class ExtractJob(Job):
    """``instructkgc extract``: documents in, one result per document (then a graph format)."""

    args: argparse.Namespace
    task: str
    schema: object  # ie2instruction.tasks.Schema, loaded on the driver
    split_num: int
    constrained: bool

    def fingerprint(self) -> dict:
        drop = {"output", "format", "base_iri", "input", *(f.name for f in fields(RayArguments))}
        return {"command": "extract", "task": self.task, "schema": asdict(self.schema), "split_num": self.split_num,
                "constrained": self.constrained, **{k: v for k, v in vars(self.args).items() if k not in drop}}

    def block_rows(self) -> int:
        return max(16, self.args.batch_size)

    def load(self):
        from ie2instruction.tasks import get_task

        from .extract.command import load_engine, make_extractor

        engine, tokenizer, template = load_engine(self.args, self.constrained)
        return make_extractor(self.args, get_task(self.task), self.schema, self.split_num, engine, tokenizer,
                              template, self.constrained)

    def process(self, extractor, items):
        from ie2instruction.io import dumps

        from .extract.documents import Document

        docs = [Document(i["id"], i["text"], i["fields"]) for i in items]
        return {}, [dumps(result.to_json()) + "\n" for result in extractor.run(docs)]

    def close(self, extractor):
        extractor.engine.close()


# ---- vLLM through Ray's LLM processor -------------------------------------------------------------------------
RAY_LLM_TESTED = "2.60"  # the Ray whose processor tests/test_vllm_contract.py checks: per-row token prompts and
# structured outputs (its vLLM stage reads ``tokenized_prompt`` and ``sampling_params["structured_outputs"]``)
_ROW_STATE: dict = {}  # per worker process: tokenizer, template, stop ids, grammars of a job (by fingerprint)


def require_ray_llm():
    """vLLM and Ray's batch LLM processor (``ray.data.llm``), or a one-line UsageError saying what to install."""
    from .infer.vllm_engine import require_vllm

    require_vllm()
    ray = require_ray()
    try:
        import ray.data.llm as llm
    except ImportError as err:
        raise UsageError(f"--ray --backend vllm runs on Ray's LLM processor (ray.data.llm), which does not import "
                         f"here ({err}); {EXTRA} and vLLM's own dependencies") from None
    from packaging.version import Version

    if Version(ray.__version__) < Version(RAY_LLM_TESTED):
        raise UsageError(f"--ray --backend vllm needs Ray >= {RAY_LLM_TESTED} (its LLM processor takes per-row "
                         f"token prompts and structured outputs); this is Ray {ray.__version__}: "
                         f"pip install 'ray[data]>={RAY_LLM_TESTED}'")
    return llm


@dataclass
class VLLMInferJob(InferJob):
    """``src/inference.py --ray --backend vllm``: the records through Ray's vLLM processor
    (``ray.data.llm.build_processor``), which runs ``--num_workers`` vLLM engines (``--gpus_per_worker`` GPUs
    each: the tensor-parallel size) with continuous batching across blocks. Only the engine is Ray's: the rows
    it is given are built here, in Ray Data tasks (:meth:`request`), from what the single-process vLLM engine
    sends (the same prompt ids, :func:`~instructkgc.infer.vllm_engine.sampling_kwargs` with the same stop ids
    and grammar, the same LoRA adapter and ``vllm.LLM`` arguments); its answers are turned into output lines by
    :meth:`answer` exactly as that engine does (cut answers closed, stop token dropped, decoded)."""

    model_path: str = ""
    adapter: Optional[str] = None
    vocab_size: int = 0  # the model's (the grammar's token table)
    dtype: str = "auto"

    def processor_config(self, workers: int) -> dict:
        """Keyword arguments of ``ray.data.llm.vLLMEngineProcessorConfig``: ``engine_kwargs`` are the
        ``vllm.LLM`` arguments of one process (:func:`~instructkgc.infer.vllm_engine.llm_kwargs`); Ray's own
        chat-template, tokenize and detokenize stages are off (the rows carry token ids both ways)."""
        from .infer import SamplingSettings
        from .infer.vllm_engine import llm_kwargs

        settings = SamplingSettings.from_args(self.generating_args)
        engine = llm_kwargs(self.model_path, self.adapter, self.model_args, self.infer_args, settings, self.dtype,
                            self.data_args.cutoff_len + settings.max_new_tokens)
        model = engine.pop("model")
        return dict(model_source=model, engine_kwargs=engine, concurrency=workers, batch_size=self.block_rows(),
                    chat_template_stage=False, tokenize_stage=False, detokenize_stage=False,
                    log_engine_metrics=False)

    def _state(self):
        key = json.dumps(self.fingerprint(), sort_keys=True, default=str)
        if key not in _ROW_STATE:
            from .infer import SamplingSettings
            from .infer.constrained import GrammarCache
            from .loader import load_tokenizer
            from .template import get_template

            tokenizer = load_tokenizer(self.model_args, self.finetuning_args)
            template = get_template(self.data_args.template).fix_tokenizer(tokenizer)
            stops = list(dict.fromkeys(int(t) for t in template.stop_ids(tokenizer)))  # as VLLMEngine
            grammars = GrammarCache(tokenizer, self.vocab_size, stops) if self.infer_args.constrained_decoding \
                else None
            _ROW_STATE[key] = (tokenizer, template, stops, grammars, SamplingSettings.from_args(self.generating_args))
        return _ROW_STATE[key]

    def _schema(self, item: dict) -> Optional[dict]:
        from .infer.records import answer_schema

        if not self.infer_args.constrained_decoding:
            return None
        return answer_schema(item["record"], self.infer_args.input_file, item["line"],
                             self.infer_args.grounded_decoding)

    def request(self, row: dict) -> dict:
        """Ray's preprocess: the engine request of one item (prompt ids, sampling parameters, adapter)."""
        from .infer.constrained import schema_ebnf
        from .infer.vllm_engine import sampling_kwargs
        from .template import build_prompt_ids

        tokenizer, template, stops, _, settings = self._state()
        item = json.loads(row["item"])
        ids, cut = build_prompt_ids(template, tokenizer, item["record"], self.data_args.cutoff_len)
        schema = self._schema(item)
        out = {"tokenized_prompt": list(ids), "truncated": bool(cut),
               "sampling_params": sampling_kwargs(settings, stops, None if schema is None else schema_ebnf(schema))}
        if self.adapter is not None:  # a row naming another model than the processor's is a LoRA request
            out["model"] = str(Path(self.adapter).resolve())
        return out

    def answer(self, row: dict) -> dict:
        """Ray's postprocess: the output line of one item from the engine's token ids."""
        from .infer.records import Counts, answer_line
        from .infer.vllm_engine import generation

        tokenizer, _, _, grammars, settings = self._state()
        item = json.loads(row["item"])
        tokens = [int(t) for t in row["generated_tokens"]]
        # Ray's rows carry no finish reason. vLLM checks the length cap (max_tokens, or max_model_len, which is
        # cutoff_len + max_new_tokens) before the stop tokens, so an answer shorter than the budget stopped.
        stopped = len(tokens) < settings.max_new_tokens
        gen = generation(tokenizer, grammars, settings.max_new_tokens, tokens, stopped, self._schema(item))
        counts = Counts(truncated_prompts=int(bool(row["truncated"])))
        line = answer_line(item["record"], gen, counts)
        return {"key": int(row["key"]), "counts": json.dumps(counts.as_dict()), "line": line}

    def dataset(self, ray, ds, workers, gpus, rows_per_block):
        if not gpus:
            raise UsageError("--ray --backend vllm runs vLLM engines on GPUs: the cluster has none (or "
                             "--gpus_per_worker is 0); use --backend hf")
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        config = vLLMEngineProcessorConfig(**self.processor_config(workers))
        return build_processor(config, preprocess=self.request, postprocess=self.answer)(ds)


def vllm_job(model_args, data_args, finetuning_args, generating_args, infer_args) -> VLLMInferJob:
    """The :class:`VLLMInferJob` of a command, checked as the single-process vLLM engine checks it (on the
    driver, before the cluster starts; reads the tokenizer and the model's config, no weights)."""
    from .infer import SamplingSettings
    from .infer.vllm_engine import prepare_vllm
    from .loader import load_tokenizer

    require_ray_llm()
    gpus = infer_args.gpus_per_worker
    if gpus is not None and gpus != int(gpus):
        raise UsageError(f"--ray --backend vllm: --gpus_per_worker is the tensor-parallel size of each engine, a "
                         f"whole number, got {gpus:g}")
    if gpus:
        infer_args.tensor_parallel_size = int(gpus)
    tokenizer = load_tokenizer(model_args, finetuning_args)
    settings = SamplingSettings.from_args(generating_args)
    model_path, adapter, vocab_size, dtype = prepare_vllm(model_args, finetuning_args, settings, tokenizer)
    return VLLMInferJob(model_args, data_args, finetuning_args, generating_args, infer_args, model_path=model_path,
                        adapter=adapter, vocab_size=vocab_size, dtype=dtype)


class _Worker:
    """A Ray Data actor: one engine, every block it gets through ``job.process``."""

    def __init__(self, job: Job):
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(CPUS_PER_WORKER)
        self.job = job
        self.state = job.load()

    def __call__(self, batch: dict) -> dict:
        items = [json.loads(s) for s in batch["item"]]
        counts, lines = self.job.process(self.state, items)
        # the block's counts ride on its first row, so that any set of rows sums to what they cost
        return {"key": batch["key"], "counts": [json.dumps(counts)] + ["{}"] * (len(lines) - 1), "line": lines}

    def __del__(self):
        if getattr(self, "state", None) is not None:
            self.job.close(self.state)


# ---- shards -----------------------------------------------------------------------------------------------
class Shards:
    """``OUTPUT.parts/``: ``job.json`` (the fingerprint) and ``part-N.jsonl`` files of ``key<TAB>counts<TAB>
    line`` rows, appended by the driver only."""

    def __init__(self, output: str):
        self.dir = Path(str(output).rstrip("/\\") + ".parts")

    def open(self, fingerprint: dict) -> dict[int, tuple[dict, str]]:
        """Rows of earlier runs of the same job (torn last lines dropped); a new folder otherwise."""
        manifest = self.dir / "job.json"
        text = json.dumps(fingerprint, sort_keys=True, ensure_ascii=False, default=str)
        if self.dir.is_dir() and manifest.is_file() and manifest.read_text(encoding="utf-8") == text:
            return self._read()
        if self.dir.exists():
            logger.info("%s: shards of another input or settings, starting over", self.dir)
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        from ie2instruction.io import atomic_writer

        with atomic_writer(manifest) as f:
            f.write(text)
        return {}

    def _read(self) -> dict[int, tuple[dict, str]]:
        rows: dict[int, tuple[dict, str]] = {}
        for part in sorted(self.dir.glob("part-*.jsonl")):
            data = part.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):  # torn by a kill in mid-write
                with open(part, "r+b") as f:
                    f.truncate(end)
            for raw in data[:end].decode("utf-8").splitlines():
                key, counts, line = raw.split("\t", 2)
                rows[int(key)] = (json.loads(counts), line + "\n")
        return rows

    def writer(self):
        n = len(list(self.dir.glob("part-*.jsonl")))
        return open(self.dir / f"part-{n:05d}.jsonl", "a", encoding="utf-8", newline="\n")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- the driver ---------------------------------------------------------------------------------------------
def _connect(ray, ray_args) -> None:
    if ray.is_initialized():  # a session the caller started (tests, notebooks)
        return
    address = None if ray_args.ray in (None, "local") else ray_args.ray
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)


def _pool(ray, ray_args) -> tuple[int, float]:
    resources = ray.cluster_resources()
    gpus = ray_args.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    workers = ray_args.num_workers
    if workers is None:
        workers = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1))
    if workers < 1:
        raise UsageError(f"--gpus_per_worker {gpus}: the cluster has {resources.get('GPU', 0):g} GPUs")
    return workers, gpus


def run(job: Job, items: list[tuple[str, dict]], ray_args, output: str,
        write: Callable[[list[str]], None]) -> tuple[dict, int]:
    """Run ``job`` over ``items`` (``(id, item)`` in input order, already checked) on Ray and ``write`` the
    output lines in input order; returns the counts summed over this run and how many items earlier runs had
    done. Raises :class:`LostItems` (shards kept) when items are missing."""
    ray = require_ray()
    shards = Shards(output)
    digest = hashlib.sha256("\n".join(json.dumps(item, ensure_ascii=False) for _, item in items).encode("utf-8"))
    rows = shards.open({**job.fingerprint(), "input": digest.hexdigest()})
    reused = len(rows)
    pending = [k for k in range(len(items)) if k not in rows]
    cause = _generate(ray, job, ray_args, items, pending, shards, rows) if pending else None
    lost = [items[k][0] for k in range(len(items)) if k not in rows]
    if lost:
        raise LostItems(lost, cause or "a worker failed")
    totals: dict = {}
    for k in pending:
        for name, n in rows[k][0].items():
            totals[name] = totals.get(name, 0) + n
    write([rows[k][1] for k in range(len(items))])
    shards.remove()
    return totals, reused


def _generate(ray, job, ray_args, items, pending, shards, rows) -> Optional[str]:
    """Stream the pending items through the actor pool into a new shard; the error that stopped it, if any."""
    from ie2instruction.io import dumps

    _connect(ray, ray_args)
    workers, gpus = _pool(ray, ray_args)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = sys.stderr.isatty()
    context.retried_map_errors, context.max_map_retries = True, RETRIES
    context.max_errored_blocks = -1  # a block failing its retries is reported by id, the others go on
    blocks = max(MIN_BLOCKS, BLOCKS_PER_WORKER * workers)
    rows_per_block = max(1, min(job.block_rows(), math.ceil(len(pending) / blocks)))
    ds = ray.data.from_items([{"key": k, "item": dumps(items[k][1])} for k in pending],
                             override_num_blocks=math.ceil(len(pending) / rows_per_block))
    ds = job.dataset(ray, ds, workers, gpus, rows_per_block)
    logger.info("ray: %d of %d items to do, %d workers (%g GPUs each), blocks of %d", len(pending), len(items),
                workers, gpus, rows_per_block)
    with shards.writer() as f:
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for key, counts, line in zip(batch["key"], batch["counts"], batch["line"]):
                    f.write(f"{int(key)}\t{counts}\t{line}")
                    rows[int(key)] = (json.loads(counts), line)
                f.flush()
                os.fsync(f.fileno())
        except Exception as err:  # noqa: BLE001 - whatever Ray raised, what is missing is reported by id
            lines = str(err).strip().splitlines()
            cause = lines[-1] if lines else type(err).__name__
            logger.warning("ray: the run stopped: %s", cause)
            return cause
    return None


# ---- the two commands -----------------------------------------------------------------------------------------
def _lost(err: LostItems):
    from .utils import fail

    fail(str(err), status=1)


def run_inference(model_args, data_args, finetuning_args, generating_args, infer_args):
    """``src/inference.py --ray``: the output file as one process writes it; returns its ``Counts``."""
    from ie2instruction.io import atomic_writer

    from .infer.records import Counts

    check(infer_args, infer_args.output_file)
    if infer_args.backend == "vllm":
        job = vllm_job(model_args, data_args, finetuning_args, generating_args, infer_args)
    else:
        job = InferJob(model_args, data_args, finetuning_args, generating_args, infer_args)
    items = inference_items(infer_args)  # read and checked before the cluster starts

    def write(lines):
        with atomic_writer(infer_args.output_file) as f:
            f.writelines(lines)

    try:
        totals, reused = run(job, items, infer_args, infer_args.output_file, write)
    except LostItems as err:
        _lost(err)
    return Counts(**{**totals, "records": len(items), "skipped": reused})


def inference_items(infer_args) -> list[tuple[str, dict]]:
    """The records of ``--input_file`` as items named ``PATH:LINE``; with ``--constrained_decoding`` every
    record's answer schema must build."""
    from ie2instruction.io import read_records

    from .infer.records import answer_schema

    out = []
    for line, record in read_records(infer_args.input_file):
        if infer_args.constrained_decoding:
            answer_schema(record, infer_args.input_file, line, infer_args.grounded_decoding)
        out.append((f"{infer_args.input_file}:{line}", {"line": line, "record": record}))
    return out


def run_extract(args, task, schema, documents, split_num: int, constrained: bool):
    """``instructkgc extract --ray``: the results written as one process writes them (resolution, store and
    report included, over the merged results); returns ``(summary, counts of what was written)``."""
    from ie2instruction.tasks.items import Result

    from .extract import outputs
    from .extract.pipeline import DocStats, Summary

    check(args, args.output)
    job = ExtractJob(args, task.name, schema, split_num, constrained)
    items = [(d.id, {"id": d.id, "text": d.text, "fields": d.fields}) for d in documents]
    summary = Summary()
    written: dict = {}

    def write(lines):
        def results():
            for line in lines:
                result = Result.from_json(json.loads(line))
                summary.add(DocStats(**result.extra["stats"]), len(result.items))
                yield result
        written.update(outputs.write(args, results()))

    try:
        run(job, items, args, args.output, write)
    except LostItems as err:
        _lost(err)
    return summary, written
