"""Training loss from the logits of the answer positions only.

A causal LM's loss needs the vocabulary projection (``lm_head``) only where the next token is a label; with
prompts masked out (``train_on_prompt`` off, the default) that is the answer, a fifth of the tokens of a
typical IE instruction. SmolLM2-135M's ``lm_head`` (49,152 x 576) is a fifth of its forward work, so projecting
every position spends most of that on positions whose logits are thrown away. The model is asked for the
logits of the positions where any row of the batch has a label (``logits_to_keep``, a 1-D index shared by the
rows) and the loss is the cross-entropy over those: the same value as the full computation, since every
position left out has no label in any row.
"""
from __future__ import annotations

import inspect

from .utils import IGNORE_INDEX


def answer_positions(labels):
    """Positions ``p`` whose next token ``labels[:, p + 1]`` is a label in at least one row (1-D, ascending)."""
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)


def answer_loss(logits, labels, positions, num_items_in_batch=None):
    """Cross-entropy of ``logits`` (``[rows, len(positions), vocab]``) against the next tokens; the mean over the
    labelled tokens, or their sum / ``num_items_in_batch`` (the Trainer's count over accumulated batches)."""
    import torch.nn.functional as F

    targets = labels[:, 1:][:, positions].to(logits.device)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    if num_items_in_batch is None:
        return loss / (targets != IGNORE_INDEX).sum().clamp(min=1)
    return loss / num_items_in_batch


def takes_logits_to_keep(model) -> bool:
    """Whether the (PEFT-wrapped) causal LM's forward accepts ``logits_to_keep``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters
