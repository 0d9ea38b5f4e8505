"""Small shared helpers of the model side: model-name groups, LoRA targets, errors, logging."""
from __future__ import annotations

import ast
import json
import logging
import os
import sys
from typing import Optional

from ie2instruction.io import UsageError  # noqa: F401  (one class for both sides; cli_errors reports it)

IGNORE_INDEX = -100
LAYERNORM_NAMES = ("norm", "ln")

# --model_name (lower-cased) -> group: decides the LoRA targets and the model class (README: Fine-tuning).
MODEL_GROUPS = {
    "llama": ("llama", "llama2", "llama3", "alpaca", "vicuna", "zhixi"),
    "custom": ("custom",),
    "falcon": ("falcon",),
    "qwen": ("qwen",),
    "qwen2": ("qwen2",),
    "baichuan": ("baichuan", "baichuan2"),
    "chatglm": ("chatglm",),
    "moss": ("moss",),
    "cpm-bee": ("cpm-bee",),
    "openba": ("openba",),
    "mistral": ("mistral",),
}

_LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_TARGETS = {
    "llama": _LLAMA_TARGETS, "custom": _LLAMA_TARGETS, "qwen2": _LLAMA_TARGETS, "moss": _LLAMA_TARGETS,
    "mistral": _LLAMA_TARGETS,
    "falcon": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "chatglm": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "baichuan": ("W_pack", "o_proj", "gate_proj", "down_proj", "up_proj"),
    "qwen": ("c_attn", "attn.c_proj", "w1", "w2", "mlp.c_proj"),
    "cpm-bee": ("project_q", "project_v"),
    "openba": ("q", "kv", "qkv", "o", "fc_in", "fc_out"),
}

logger = logging.getLogger("instructkgc")

# bitsandbytes (>= 0.48) on a CPU with AVX512-BF16 tries, at import, to fetch an optional 4-bit CPU kernel from the
# Hugging Face hub through the `kernels` package, and warns "Failed to load CPU gemm_4bit_forward from
# kernels-community: No module named 'kernels'" on every model load when it is absent. It then uses its own
# built-in CPU path, which is what we want offline; the warning says nothing actionable, so it is dropped here.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward"))


def get_logger(name: str = "instructkgc") -> logging.Logger:
    """A logger that prints ``[instructkgc] message`` on stderr once configured by a CLI."""
    if not logging.getLogger("instructkgc").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(name)s] %(levelname)s: %(message)s"))
        root = logging.getLogger("instructkgc")
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(name)


def read_json_file(path):
    """The JSON value in ``path``; UsageError ``PATH:LINE: invalid JSON (...)`` when it is not JSON."""
    from pathlib import Path

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def model_group(model_name: Optional[str]) -> str:
    """Map ``--model_name`` to its group (see ``MODEL_GROUPS``); unknown names give ``other``."""
    name = (model_name or "").lower()
    for group, members in MODEL_GROUPS.items():
        if name in members:
            return group
    return "other"


def parse_module_list(value) -> Optional[list[str]]:
    """Parse ``q_proj,v_proj``, ``['q_proj','v_proj']`` (JSON or Python literal, never eval) or ``all``."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        text = str(value).strip()
        if not text:
            return None
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                try:
                    items = ast.literal_eval(text)
                except (ValueError, SyntaxError) as exc:
                    raise UsageError(f"cannot parse module list {text!r}: {exc}") from None
            if not isinstance(items, list):
                raise UsageError(f"module list {text!r} is not a list")
        else:
            items = text.split(",")
    out = [str(x).strip().strip("'\"") for x in items if str(x).strip().strip("'\"")]
    return out or None


def default_lora_targets(model_name: Optional[str]) -> list[str]:
    """Default LoRA targets of the model group; ``all`` (every Linear except lm_head) for unknown names."""
    group = model_group(model_name)
    if group not in LORA_TARGETS:
        get_logger().warning(
            "model_name %r is not a known group (%s); LoRA targets default to all Linear layers except lm_head",
            model_name, ", ".join(sorted(LORA_TARGETS)),
        )
        return ["all"]
    return list(LORA_TARGETS[group])


def is_main_process() -> bool:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")) or 0) <= 0
