"""The bundled samples (``data/<TASK>/sample.json``) converted to instruction records by convert_func, as the
inference, Ray, Parquet and vLLM tests feed them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]


def convert_sample(task: str, out: Path, split_num: int = 6, limit: Optional[int] = None) -> Path:
    """``data/<task>/sample.json`` as test records in ``out`` (its first ``limit`` lines if given)."""
    subprocess.run([sys.executable, str(REPO / "ie2instruction/convert_func.py"), "--src_path",
                    str(REPO / "data" / task / "sample.json"), "--tgt_path", str(out), "--schema_path",
                    str(REPO / "data" / task / "schema.json"), "--task", task, "--split", "test", "--split_num",
                    str(split_num)], check=True, capture_output=True)
    if limit is not None:
        lines = out.read_text(encoding="utf-8").splitlines()[:limit]
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
