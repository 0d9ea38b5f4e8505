"""Training data: reading, supervised preprocessing and the batch collators (README: Fine-tuning).

* JSON arrays and JSONL are both read (streamed, ``PATH:LINE: problem`` on bad input).
* Records whose query or output is empty/not a string are skipped, with a count warning (the original
  dropped them silently); truncated examples are counted and reported.
* ``--packing`` (the default) lays a batch out without padding: as one row with the prompt prefix its examples
  share computed once (:mod:`~instructkgc.shared_prefix`) where the model's attention allows it, else
  ``PackingCollator``'s rows, with position ids restarting at every example and no attention mask, so the model
  attends within each example only; ``--packing false`` gives the original ``DataCollatorForSeq2Seq`` with (left)
  padding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .template import Template, fit_prompt, record_query
from .utils import IGNORE_INDEX, UsageError, get_logger

logger = get_logger(__name__)


def load_records(path) -> list[dict]:
    """Training records from a JSON array or JSONL file (``ie2instruction.io.InputError`` on bad input)."""
    from ie2instruction.io import InputError, read_records

    records = []
    for line, record in read_records(path):
        if not isinstance(record, dict):
            raise InputError(path, line, "record is not a JSON object")
        records.append(record)
    return records


def encode_supervised(template: Template, tokenizer, query: str, response: str, system: Optional[str],
                      cutoff_len: int, max_target_length: int, train_on_prompt: bool = False,
                      max_prompt_len: Optional[int] = None):
    """``(input_ids, labels, truncated)`` of one example.

    An example that fits ``cutoff_len`` is kept whole. Otherwise the answer keeps its share of the budget (at
    least ``max_target_length``, as the original) and the prompt is cut like an inference prompt
    (:func:`~instructkgc.template.fit_prompt`), so training and generation see the same prompt.
    ``max_prompt_len`` (P-Tuning's ``--max_src_len``) caps the prompt, cut the same way, as inference does.
    """
    source, target = template.encode_oneturn(tokenizer, query, response, system)
    eos = template.final_eos_ids(tokenizer)
    truncated = False
    if max_prompt_len is not None and len(source) > max_prompt_len:
        source, truncated = fit_prompt(template, tokenizer, query, system, max_prompt_len)
    s, t = len(source), len(target)
    room = cutoff_len - len(eos)
    if s + t > room:
        truncated = True
        max_t = min(t, max(int(room * t / (s + t)), max_target_length), room)
        target = target[:max_t]
        if s > room - max_t:
            source, _ = fit_prompt(template, tokenizer, query, system, room - max_t)
    labels = (list(source) if train_on_prompt else [IGNORE_INDEX] * len(source)) + list(target)
    input_ids = list(source) + list(target) + eos
    labels = labels + eos
    return input_ids[:cutoff_len], labels[:cutoff_len], truncated


def _valid(record) -> bool:
    return (isinstance(record.get("instruction"), str) and record["instruction"] != ""
            and isinstance(record.get("output"), str) and record["output"] != "")


def preprocess_supervised(records: list[dict], tokenizer, data_args, template: Template, what: str = "train",
                          max_prompt_len: Optional[int] = None):
    """Tokenise records into a ``datasets.Dataset`` with ``input_ids``, ``labels``, ``attention_mask``
    (``max_prompt_len``: see :func:`encode_supervised`)."""
    from datasets import Dataset

    if data_args.train_on_prompt and template.efficient_eos:
        raise UsageError(f"--train_on_prompt cannot be used with template {template.name} (efficient_eos)")
    kept = [r for r in records if _valid(r)]
    if len(kept) < len(records):
        logger.warning("%s: skipped %d of %d records with an empty or missing instruction/output",
                       what, len(records) - len(kept), len(records))
    if not kept:
        raise UsageError(f"{what}: no usable records (each needs a non-empty 'instruction' and 'output' string)")
    columns = {
        "query": [record_query(r) for r in kept],
        "response": [r["output"] for r in kept],
        "system": [r.get("system") or data_args.system_prompt or "" for r in kept],
    }
    args = (data_args.cutoff_len, data_args.max_target_length, data_args.train_on_prompt, max_prompt_len)

    def encode_batch(batch):
        out = {"input_ids": [], "labels": [], "attention_mask": [], "truncated": []}
        for query, response, system in zip(batch["query"], batch["response"], batch["system"]):
            ids, labels, cut = encode_supervised(template, tokenizer, query, response, system or None, *args)
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["attention_mask"].append([1] * len(ids))
            out["truncated"].append(cut)
        return out

    dataset = Dataset.from_dict(columns)
    workers = data_args.preprocessing_num_workers
    workers = min(workers, max(1, len(kept) // 1000)) if workers else None
    dataset = dataset.map(encode_batch, batched=True, num_proc=workers if workers and workers > 1 else None,
                          remove_columns=list(columns), desc=f"tokenising {what}")
    n_cut = sum(dataset["truncated"])
    if n_cut:
        logger.warning("%s: %d of %d examples were truncated to --cutoff_len %d (target budget >= "
                       "--max_target_length %d)", what, n_cut, len(dataset), data_args.cutoff_len,
                       data_args.max_target_length)
    return dataset.remove_columns("truncated")


@dataclass
class PackingCollator:
    """Pack a batch's examples into rows without padding; position ids restart at each example.

    Rows are filled first-fit-decreasing up to the longest example of the batch (``max_row_len`` when set),
    so attention cost stays that of the padded batch while most padding disappears. A row's unused tail is
    a separate dummy segment (its own positions, labels -100), never attended by real tokens.
    """

    pad_token_id: int
    max_row_len: Optional[int] = None

    def __call__(self, features):
        import torch

        examples = sorted(((list(f["input_ids"]), list(f["labels"])) for f in features), key=lambda e: -len(e[0]))
        row_len = max(self.max_row_len or 0, len(examples[0][0]))
        rows: list[list] = []  # each: [used, [(ids, labels), ...]]
        for ex in examples:
            for row in rows:
                if row[0] + len(ex[0]) <= row_len:
                    row[0] += len(ex[0])
                    row[1].append(ex)
                    break
            else:
                rows.append([len(ex[0]), [ex]])
        input_ids, labels, positions = [], [], []
        for used, items in rows:
            ids = [i for ex in items for i in ex[0]]
            lab = [i for ex in items for i in ex[1]]
            pos = [p for ex in items for p in range(len(ex[0]))]
            pad = row_len - used
            input_ids.append(ids + [self.pad_token_id] * pad)
            labels.append(lab + [IGNORE_INDEX] * pad)
            positions.append(pos + list(range(pad)))
        return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels),
                "position_ids": torch.tensor(positions)}


def mean_batch_positions(dataset, collator, batch_size: int, samples: int = 64, seed: int = 0) -> float:
    """Mean number of positions (``input_ids`` elements, padding included) of a random ``batch_size`` batch as
    ``collator`` lays it out: what a training step costs, in the unit of the Trainer's
    ``num_input_tokens_seen``."""
    import random

    rng = random.Random(seed)
    size = min(batch_size, len(dataset))
    total = sum(collator([dataset[i] for i in rng.sample(range(len(dataset)), size)])["input_ids"].numel()
                for _ in range(samples))
    return total / samples


def supports_packing(model) -> bool:
    """Packed rows need transformers' own attention masking (position-id based); remote code may lack it."""
    base = model
    for attr in ("get_base_model",):
        if hasattr(base, attr):
            base = base.get_base_model()
    module = type(base).__module__
    return module.startswith("transformers.models.") and getattr(base.config, "is_encoder_decoder", False) is False


def make_collator(tokenizer, model, data_args):
    """With ``--packing`` (the default): shared-prefix rows where the model can take them (this switches its
    attention to :func:`~instructkgc.shared_prefix.segment_attention`), else packed rows where the model
    supports them; otherwise, and without ``--packing``, padded batches."""
    from transformers import DataCollatorForSeq2Seq

    from . import shared_prefix

    if data_args.packing and supports_packing(model):
        if shared_prefix.enable(model, data_args.cutoff_len):
            return shared_prefix.SharedPrefixCollator()
        return PackingCollator(pad_token_id=tokenizer.pad_token_id)
    if data_args.packing:
        logger.warning("--packing: %s is not a transformers-native model; using padded batches",
                       type(model).__name__)
    return DataCollatorForSeq2Seq(
        tokenizer, pad_to_multiple_of=4 if tokenizer.padding_side == "left" else None,
        label_pad_token_id=IGNORE_INDEX if data_args.ignore_pad_token_for_loss else tokenizer.pad_token_id,
    )
