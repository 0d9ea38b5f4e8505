"""The seven IE tasks, one module each. ``get_task(name)`` returns a fresh task object."""
from __future__ import annotations

from .base import NAN, Sampler, Schema, Task, read_schema, split_chunks
from .ee import EE
from .eea import EEA
from .eet import EET
from .kg import KG
from .ner import NER
from .relation import RE
from .spo import SPO

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (NER, RE, SPO, EE, EET, EEA, KG)}


def get_task(name: str) -> Task:
    try:
        return TASKS[name.upper()]()
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None


__all__ = ["NAN", "TASKS", "Sampler", "Schema", "Task", "get_task", "read_schema", "split_chunks"]
