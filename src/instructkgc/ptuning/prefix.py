"""P-Tuning v2 prefixes on peft's prefix tuning: build, save, reload, check against a base model, generate.

A checkpoint folder holds
* ``adapter_config.json`` + ``adapter_model.safetensors`` — peft's own format (the key/value prefix of every
  layer, already projected), loadable by ``peft.PeftModel.from_pretrained`` anywhere;
* ``prefix_encoder.safetensors`` — the full trainable state (with ``--prefix_projection true`` this includes
  the reparameterisation MLP, which peft's format drops), used to continue training;
* ``instructkgc_args.json`` — the training settings (template, lengths, base model type and shape).

Positions: peft numbers the real tokens after the prefix (``P, P+1, ...`` for a prefix of length ``P``).
:class:`PrefixGenerator` generates with exactly that numbering, left padding included, by handing the base
model's ``generate`` a cache pre-filled with the prefix (peft 0.21's own ``generate`` misses the prefix under
transformers 5.24, whose generation kwarg is ``cache``).
"""
from __future__ import annotations

import inspect
from pathlib import Path

from ..run_args import read_args, write_args
from ..utils import UsageError, get_logger, read_json_file

logger = get_logger(__name__)

ENCODER_FILE = "prefix_encoder.safetensors"
SHAPE_KEYS = ("num_layers", "token_dim", "num_attention_heads")


def prefix_config(model_config, pre_seq_len: int, prefix_projection: bool, prefix_hidden_size=None,
                  inference_mode: bool = False):
    """A ``PrefixTuningConfig`` for ``model_config`` with its shape fields (layers, kv width, heads) filled in."""
    from peft import PrefixTuningConfig, TaskType
    from peft.utils.other import _prepare_prompt_learning_config

    if pre_seq_len < 1:
        raise UsageError("--pre_seq_len must be at least 1")
    config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=pre_seq_len,
                                prefix_projection=bool(prefix_projection), inference_mode=inference_mode,
                                encoder_hidden_size=prefix_hidden_size)
    try:
        config = _prepare_prompt_learning_config(config, model_config.to_dict())
    except (ValueError, KeyError) as exc:
        raise UsageError(f"P-Tuning cannot read the model shape: {str(exc).splitlines()[0]}") from None
    if config.encoder_hidden_size is None:
        config.encoder_hidden_size = getattr(model_config, "hidden_size", None) or config.token_dim
    return config


def add_prefix(model, pre_seq_len: int, prefix_projection: bool, prefix_hidden_size=None):
    """Wrap a (frozen) causal LM in a trainable peft prefix-tuning model."""
    from peft import get_peft_model

    model.requires_grad_(False)
    config = prefix_config(model.config, pre_seq_len, prefix_projection, prefix_hidden_size)
    return get_peft_model(model, config)


def read_checkpoint_config(folder) -> dict:
    """``adapter_config.json`` of a P-Tuning checkpoint, or UsageError naming what is wrong."""
    path = Path(folder) / "adapter_config.json"
    if not Path(folder).is_dir():
        raise UsageError(f"{folder}: P-Tuning checkpoint folder not found")
    if not path.is_file():
        raise UsageError(f"{folder}: not a P-Tuning checkpoint (no adapter_config.json)")
    config = read_json_file(path)
    if config.get("peft_type") != "PREFIX_TUNING":
        raise UsageError(f"{folder}: a {config.get('peft_type')} adapter, not a P-Tuning v2 (prefix) checkpoint")
    return config


def check_compatible(model_config, folder, saved: dict) -> None:
    """UsageError (one line) when the base model cannot take the checkpoint's prefixes."""
    expected = prefix_config(model_config, int(saved["num_virtual_tokens"]), bool(saved.get("prefix_projection")))
    meta = read_args(folder)
    problems = [f"{k} {saved.get(k)} vs {getattr(expected, k)}" for k in SHAPE_KEYS
                if saved.get(k) is not None and saved.get(k) != getattr(expected, k)]
    want_type = meta.get("model_type")
    if want_type and want_type != getattr(model_config, "model_type", None):
        problems.insert(0, f"model_type {want_type} vs {model_config.model_type}")
    if problems:
        raise UsageError(f"P-Tuning checkpoint {folder} does not match the base model "
                         f"(checkpoint vs base: {'; '.join(problems)})")


def check_checkpoint(folder, model_dir, trust_remote_code: bool = False, flag: str = "--model_dir") -> dict:
    """Check a checkpoint against the base model's config before any weights load; returns its adapter config."""
    from ..loader import load_config

    saved = read_checkpoint_config(folder)
    config = load_config(model_dir, trust_remote_code, flag)
    check_compatible(config, folder, saved)
    return saved


def load_prefix(model, folder, is_trainable: bool = False):
    """Attach the prefixes saved in ``folder`` to ``model`` (checked first; UsageError when they do not fit).

    Inference uses peft's saved (projected) prefix; training resumes from the full encoder state.
    """
    import torch
    from peft import PeftModel

    saved = read_checkpoint_config(folder)
    check_compatible(model.config, folder, saved)
    model.requires_grad_(False)
    if not is_trainable:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    from safetensors.torch import load_file

    encoder_path = Path(folder) / ENCODER_FILE
    if not encoder_path.is_file():
        raise UsageError(f"{folder}: no {ENCODER_FILE}, so training cannot continue from it "
                         "(saved by another tool?)")
    peft_model = add_prefix(model, int(saved["num_virtual_tokens"]), bool(saved.get("prefix_projection")),
                            saved.get("encoder_hidden_size"))
    encoder = peft_model.prompt_encoder[peft_model.active_adapter]
    state = load_file(str(encoder_path))
    try:
        encoder.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    except RuntimeError as exc:
        raise UsageError(f"{encoder_path}: does not fit the prefix encoder ({str(exc).splitlines()[0]})") from None
    return peft_model


def save_prefix(peft_model, folder, meta: dict) -> None:
    """Write the peft adapter, the full encoder state and ``instructkgc_args.json`` to ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(folder))
    encoder = peft_model.prompt_encoder[peft_model.active_adapter]
    save_file({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()},
              str(folder / ENCODER_FILE))
    base = peft_model.get_base_model().config
    write_args(folder, dict(meta, model_type=getattr(base, "model_type", None)))


class PrefixGenerator:
    """The small model surface :class:`~instructkgc.infer.hf_engine.HFEngine` uses, for a peft prefix model.

    ``generate`` runs the base model's ``generate`` on a cache pre-filled with the prefixes, an attention mask
    that covers them and position ids that start after them (as in peft's forward, i.e. as in training).
    """

    def __init__(self, peft_model):
        self.peft_model = peft_model
        self.base = peft_model.get_base_model()
        self.num_virtual_tokens = peft_model.active_peft_config.num_virtual_tokens
        params = inspect.signature(self.base.prepare_inputs_for_generation).parameters
        self._cache_key = "cache" if "cache" in params else "past_key_values"
        self._positions = "position_ids" in inspect.signature(self.base.forward).parameters

    @property
    def device(self):
        return self.base.device

    @property
    def config(self):
        return self.base.config

    def get_output_embeddings(self):
        return self.base.get_output_embeddings()

    def generate(self, input_ids, attention_mask=None, **kwargs):
        import torch

        batch, n = input_ids.shape[0], self.num_virtual_tokens
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        cache = self.peft_model.get_prompt(batch)
        ones = attention_mask.new_ones((batch, n))
        kwargs[self._cache_key] = cache
        if self._positions:
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + n
        return self.base.generate(input_ids=input_ids, attention_mask=torch.cat([ones, attention_mask], dim=1),
                                  **kwargs)

