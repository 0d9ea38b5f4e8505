"""The run-metadata file ``instructkgc_args.json``: its name, reading, writing, and defaults from a checkpoint.

Training writes it beside the weights (``src/finetune.py``: output_dir and every checkpoint; P-Tuning: every
``global_step-N`` folder). Inference, ``instructkgc extract``, export and continued P-Tuning read it back so
that values a model was trained with (template, prompt budget, ...) are the defaults (README: Inference).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Union

from .utils import get_logger

logger = get_logger(__name__)

ARGS_FILE = "instructkgc_args.json"


def read_args(folder) -> dict:
    """The saved arguments of a model/adapter/checkpoint folder; ``{}`` when there are none (or unreadable)."""
    if not folder:
        return {}
    path = Path(folder) / ARGS_FILE
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        logger.warning("%s is unreadable; ignoring it", path)
        return {}
    return values if isinstance(values, dict) else {}


def write_args(folder, values: dict) -> None:
    """Write ``values`` to ``folder/instructkgc_args.json`` atomically (temp file + rename)."""
    path = Path(folder) / ARGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(values, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def given_flags(argv) -> set[str]:
    """Names of the ``--flags`` present in ``argv``."""
    return {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}


def fill_from_checkpoint(folder, target, names: Union[Iterable[str], Mapping[str, str]], given: set[str]) -> None:
    """Defaults from the arguments ``folder`` was trained with, set on ``target`` (one object of arguments).

    ``names``: the attributes to fill, or a mapping attribute -> key in the file. An attribute not in ``given``
    takes the saved value (when the file has one); a given value that differs from it is kept, with a warning.
    """
    saved = read_args(folder)
    pairs = names.items() if isinstance(names, Mapping) else ((n, n) for n in names)
    for attr, key in pairs:
        if saved.get(key) is None:
            continue
        if attr not in given:
            setattr(target, attr, saved[key])
        elif getattr(target, attr) != saved[key]:
            logger.warning("--%s %s differs from the %s %r %s was trained with; answers may degrade",
                           attr, getattr(target, attr), key, saved[key], folder)


def apply_saved_defaults(argv, model_args, data_args) -> None:
    """``--model_name``, ``--template`` and ``--cutoff_len`` not in ``argv``: the values the first
    ``--checkpoint_dir`` was trained with (``src/inference.py``, ``src/export_model.py``)."""
    if not model_args.checkpoint_dir:
        return
    given = given_flags(argv)
    folder = model_args.checkpoint_dir[0]
    fill_from_checkpoint(folder, model_args, ("model_name",), given)
    fill_from_checkpoint(folder, data_args, ("template", "cutoff_len"), given)
