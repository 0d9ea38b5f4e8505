"""Training batches that compute the prompt prefix their examples share once (README: Fine-tuning, Throughput).

Every instruction of a converted file begins with the same tokens: the chat template's system turn and the task's
instruction sentence, often ~40% of an example (CoNLL04 RE with SmolLM2: ~70 of 190 tokens). A batch is laid out
as one row: that common prefix once, then each example's remainder, with position ids that continue from the
prefix's length, so every token sits at the position it has in its own example. The attention function
(:func:`segment_attention`) lets a remainder's tokens see the prefix and their own remainder, causally, and nothing
else; the prefix sees itself. Each token therefore computes exactly what it computes in its own padded row, and
the loss and gradients are those of the padded batch (up to float rounding; with LoRA dropout the prefix's dropout
mask is shared by the batch's examples), while the batch costs its distinct tokens: no padding, and the prefix
once instead of once per example (CoNLL04 batches of 4: ~560 positions instead of ~900 in packed rows).

The prefix stops before the first answer token of every example, so no label is predicted from a shared
position. It is used where the model runs transformers' SDPA attention through the attention interface and has no
sliding window shorter than ``cutoff_len``; other models keep the packed rows of
:class:`~instructkgc.data.PackingCollator`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .utils import IGNORE_INDEX

ATTENTION = "instructkgc_shared_prefix"
SEGMENTS = "shared_prefix_segments"  # batch key: (prefix length, (remainder lengths ...)), passed to the attention


def _first_label(labels) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


def shared_prefix_length(examples) -> int:
    """Length of the token prefix common to all ``(input_ids, labels)`` examples, ending before the token that
    precedes each example's first label (that token's logit predicts a label, so it must be the example's own)."""
    cap = min(_first_label(labels) for _, labels in examples) - 1
    first = examples[0][0]
    n = 0
    while n < cap and all(ids[n] == first[n] for ids, _ in examples):
        n += 1
    return max(n, 0)


@dataclass
class SharedPrefixCollator:
    """One row per batch: the shared prefix once, then every example's remainder (see the module docstring)."""

    def __call__(self, features):
        import torch

        examples = [(list(f["input_ids"]), list(f["labels"])) for f in features]
        k = shared_prefix_length(examples)
        ids, labels, positions = list(examples[0][0][:k]), [IGNORE_INDEX] * k, list(range(k))
        for example_ids, example_labels in examples:
            ids += example_ids[k:]
            labels += example_labels[k:]
            positions += range(k, len(example_ids))
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([positions]),
                SEGMENTS: (k, tuple(len(example_ids) - k for example_ids, _ in examples))}


def segment_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA over a :class:`SharedPrefixCollator` row: the prefix attends to itself, each remainder to the prefix
    and to itself (causally); without the batch's segments, transformers' own SDPA attention."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = kwargs.pop(SEGMENTS, None)
    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    k, lengths = segments
    gqa = query.shape[1] != key.shape[1]
    outputs = []
    if k:
        outputs.append(F.scaled_dot_product_attention(query[:, :, :k], key[:, :, :k], value[:, :, :k],
                                                      dropout_p=dropout, is_causal=True, scale=scaling,
                                                      enable_gqa=gqa))
    start = k
    for n in lengths:
        end = start + n
        keys = torch.cat([key[:, :, :k], key[:, :, start:end]], 2)
        values = torch.cat([value[:, :, :k], value[:, :, start:end]], 2)
        causal = torch.ones(n, k + n, dtype=torch.bool, device=query.device).tril(k)  # the prefix, then causal
        outputs.append(F.scaled_dot_product_attention(query[:, :, start:end], keys, values, attn_mask=causal,
                                                      dropout_p=dropout, scale=scaling, enable_gqa=gqa))
        start = end
    return torch.cat(outputs, 2).transpose(1, 2).contiguous(), None


def enable(model, cutoff_len: int) -> bool:
    """Switch ``model`` (or a PEFT model's base; a transformers-native decoder, see
    :func:`~instructkgc.data.supports_packing`) to :func:`segment_attention` if it can use it: SDPA attention, no
    sliding window shorter than ``cutoff_len``. Returns whether it did; batches without segments are unaffected
    (plain SDPA, the same masks)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    if getattr(config, "_attn_implementation", None) not in ("sdpa", ATTENTION):
        return False
    window, layer_types = getattr(config, "sliding_window", None), getattr(config, "layer_types", None)
    if window and window < cutoff_len and not (layer_types and all(t == "full_attention" for t in layer_types)):
        return False
    AttentionInterface.register(ATTENTION, segment_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    base.set_attn_implementation(ATTENTION)
    return config._attn_implementation == ATTENTION
