"""Merge the items of all windows and schema chunks of one document, without duplicates.

Two items are the same when they agree on everything but offsets (for events: type and trigger; the
arguments of equal events are united). The earliest occurrence in the document gives the offsets. The
result is ordered by document position; items without offsets come last, in the order they were found.
"""
from __future__ import annotations

from typing import Iterable

_OFFSETS = {"start", "end", "head_start", "head_end", "tail_start", "tail_end", "value_start", "value_end"}


def _key(item: dict) -> tuple:
    if "arguments" in item:
        if item["trigger"] is None:  # no trigger: only identical argument sets are the same event
            return ("", item["type"], tuple(sorted((a["text"], a["role"]) for a in item["arguments"])))
        return (item["type"], item["trigger"])
    return tuple(v for k, v in item.items() if k not in _OFFSETS)


def _position(item: dict) -> float:
    starts = [item.get(k) for k in ("start", "head_start") if item.get(k) is not None]
    if not starts and item.get("arguments"):
        starts = [a["start"] for a in item["arguments"] if a["start"] is not None]
    return min(starts) if starts else float("inf")


def _merge_arguments(into: list[dict], more: list[dict]) -> None:
    index = {(a["text"], a["role"]): a for a in into}
    for a in more:
        old = index.get((a["text"], a["role"]))
        if old is None:
            index[(a["text"], a["role"])] = a
            into.append(a)
        elif a["start"] is not None and (old["start"] is None or a["start"] < old["start"]):
            old.update(start=a["start"], end=a["end"])


def merge_items(items: Iterable[dict]) -> list[dict]:
    """Deduplicated items in document order (see the module docstring)."""
    kept: dict[tuple, dict] = {}
    for item in items:
        key = _key(item)
        old = kept.get(key)
        if old is None:
            kept[key] = item = dict(item)
            if "arguments" in item:
                item["arguments"] = [dict(a) for a in item["arguments"]]
            continue
        if "arguments" in item:
            _merge_arguments(old["arguments"], [dict(a) for a in item["arguments"]])
            old["arguments"].sort(key=lambda a: (a["start"] is None, a["start"] or 0))
        if _position(item) < _position(old):
            for k in _OFFSETS & item.keys():
                old[k] = item[k]
    out = list(kept.values())
    out.sort(key=_position)  # stable: ties and unplaced items keep the order they were found in
    return out
