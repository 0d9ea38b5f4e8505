"""Loading a tokenizer, a model with its template, and adapters (full / freeze / LoRA, README: Fine-tuning).

Deviations from the original, each a bug fix:

* gradient checkpointing is enabled only when asked (``gradient_checkpointing=True``; the trainer passes
  ``--gradient_checkpointing``), not forced;
* when the template added tokens the vocabulary lacked, the embeddings are resized; new rows are set to the
  mean of the existing rows, so training and inference see the same values;
* a missing bos is left missing (the original set ``<|beginoftext|>``, a token no vocabulary has);
* 8-bit models are never moved with ``.to()``.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from .utils import LAYERNORM_NAMES, UsageError, get_logger, model_group

logger = get_logger(__name__)

def _has_auto_map(path) -> bool:
    for name in ("config.json", "tokenizer_config.json"):
        try:
            if "auto_map" in json.loads((Path(path) / name).read_text(encoding="utf-8")):
                return True
        except (OSError, ValueError, TypeError):
            continue
    return False


def load_error(path, what: str, exc: Exception, trust_remote_code: bool, flag: str = "--model_name_or_path"):
    """The one-line UsageError for a model folder that does not load; when it ships its own code (``auto_map``)
    and that code is not trusted, the message says which flag runs it."""
    text = str(exc)
    if not trust_remote_code and ("trust_remote_code" in text or _has_auto_map(path)):
        return UsageError(f"{flag} {path}: the model ships its own Python code (auto_map), which runs only when "
                          "you trust it: add --trust_remote_code")
    return UsageError(f"{flag} {path}: cannot load {what} ({text.splitlines()[0] if text else type(exc).__name__})")


def load_config(path, trust_remote_code: bool = False, flag: str = "--model_name_or_path", **kwargs):
    """``AutoConfig.from_pretrained`` with remote code off unless asked; UsageError (one line) on failure."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        raise load_error(path, "a model config", exc, trust_remote_code, flag) from None


def _model_path(model_args, finetuning_args) -> str:
    if finetuning_args.finetuning_type != "lora" and model_args.checkpoint_dir:
        return model_args.checkpoint_dir[0]
    return model_args.model_name_or_path


def load_tokenizer(model_args, finetuning_args=None):
    """Tokenizer with left padding (the template's fixes come from :meth:`Template.fix_tokenizer`)."""
    from transformers import AutoTokenizer

    path = model_args.model_name_or_path
    if finetuning_args is not None:
        path = _model_path(model_args, finetuning_args)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, use_fast=model_args.use_fast_tokenizer, split_special_tokens=model_args.split_special_tokens,
            padding_side="left", trust_remote_code=model_args.trust_remote_code, cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
        )
    except (OSError, ValueError) as exc:
        raise load_error(path, "a tokenizer", exc, model_args.trust_remote_code) from None
    if "ChatGLM" in type(tokenizer).__name__:  # its own _pad ignores padding_side (fix of the original)
        from transformers import PreTrainedTokenizerBase
        tokenizer._pad = PreTrainedTokenizerBase._pad.__get__(tokenizer)  # noqa: SLF001
    tokenizer.padding_side = "left"
    return tokenizer


def infer_dtype(config, compute_dtype=None, cuda: Optional[bool] = None):
    """The given dtype, else bf16 if the config says so and CUDA supports it, fp16 on CUDA, fp32 on CPU.

    ``cuda``: whether the model runs on CUDA (default: whether this process sees a GPU); the vLLM engine asks
    with ``cuda=True``, so both engines pick the same dtype."""
    import torch

    if compute_dtype is not None:
        return compute_dtype
    visible = torch.cuda.is_available()
    if visible if cuda is None else cuda:
        config_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if config_dtype in (torch.bfloat16, "bfloat16") and (not visible or torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16
    return torch.float32


def _quantization_config(model_args, dtype):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(f"--bits {model_args.bits} needs bitsandbytes: pip install 'instructkgc[qlora]'")
    from transformers import BitsAndBytesConfig

    if model_args.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype,
                              bnb_4bit_use_double_quant=model_args.double_quant,
                              bnb_4bit_quant_type=model_args.quant_type)


def _device_map():
    import torch

    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", "0") or 0)}
    return {"": "cpu"}


def resize_embeddings(model, tokenizer) -> None:
    """Grow the embeddings to ``len(tokenizer)``; new rows = mean of the old rows (deterministic)."""
    import torch

    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old:
        return
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
            if emb is not None and emb.weight.shape[0] == len(tokenizer):
                emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)
    logger.info("resized the embeddings from %d to %d tokens for the template's special tokens",
                old, len(tokenizer))


def find_all_linear_modules(model, model_name: Optional[str] = None) -> list[str]:
    """Last name component of every Linear (or bnb Linear4bit/8bit) module except the output head."""
    import torch

    classes = [torch.nn.Linear]
    try:
        import bitsandbytes as bnb
        classes += [bnb.nn.Linear4bit, bnb.nn.Linear8bitLt]
    except Exception:  # bitsandbytes optional
        pass
    excluded = {"lm_head", "output_layer"} if model_group(model_name) == "chatglm" else {"lm_head"}
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, tuple(classes)) and name.split(".")[-1] not in excluded:
            names.add(name.split(".")[-1])
    return sorted(names)


def _prepare_for_training(model, model_args, finetuning_args, gradient_checkpointing: bool):
    import torch

    if finetuning_args.upcast_layernorm:
        for name, param in model.named_parameters():
            if param.ndim == 1 and any(n in name for n in LAYERNORM_NAMES):
                param.data = param.data.to(torch.float32)
    if finetuning_args.neft_alpha > 1e-6:
        def neftune(module, args, output):
            if module.training:
                dims = torch.tensor(output.size(1) * output.size(2))
                mag = finetuning_args.neft_alpha / torch.sqrt(dims)
                output = output + torch.zeros_like(output).uniform_(-mag, mag)
            return output
        model.get_input_embeddings().register_forward_hook(neftune)
    if model_args.bits in (4, 8):
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing and getattr(model, "supports_gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        model.enable_input_require_grads()
    if gradient_checkpointing:
        model.config.use_cache = False
    return model


def _layer_count(config) -> int:
    for attr in ("num_hidden_layers", "num_layers", "n_layer"):
        if getattr(config, attr, None):
            return getattr(config, attr)
    raise UsageError("--finetuning_type freeze: cannot find the number of layers in the model config")


def init_adapter(model, model_args, finetuning_args, is_trainable: bool):
    """Apply full / freeze / LoRA set-up; LoRA folders in ``--checkpoint_dir`` are merged (16-bit) or
    stacked (quantised), and the last one is resumed as the trainable adapter when training."""
    import torch

    ftype = finetuning_args.finetuning_type
    if not is_trainable and not model_args.checkpoint_dir:
        return model
    if ftype == "full" and is_trainable:
        return model.float()
    if ftype == "freeze" and is_trainable:
        n_layers, k = _layer_count(model.config), finetuning_args.num_layer_trainable
        ids = range(n_layers - k, n_layers) if k > 0 else range(-k)
        keys = [f"{i}.{m}" for i in ids for m in finetuning_args.name_module_trainable]
        for name, param in model.named_parameters():
            if any(key in name for key in keys):
                param.data = param.data.to(torch.float32)
            else:
                param.requires_grad_(False)
        return model
    if ftype != "lora":
        return model
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    dirs = list(model_args.checkpoint_dir or [])
    latest = None
    if dirs and is_trainable and finetuning_args.resume_lora_training:
        dirs, latest = dirs[:-1], dirs[-1]
    for path in dirs:
        _check_adapter_dir(path)
        if model_args.bits >= 16:
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        elif isinstance(model, PeftModel):  # quantised: adapters stack
            name = f"adapter_{len(model.peft_config)}"
            model.load_adapter(path, adapter_name=name)
            model.base_model.set_adapter(list(model.peft_config))
        else:
            model = PeftModel.from_pretrained(model, path)
    if dirs:
        logger.info("loaded adapter(s) %s (%s)", ", ".join(dirs), "merged" if model_args.bits >= 16 else "stacked")
    if latest is not None:
        _check_adapter_dir(latest)
        if isinstance(model, PeftModel):
            model.load_adapter(latest, adapter_name="trainable", is_trainable=True)
            model.base_model.set_adapter(list(model.peft_config))
            for name, param in model.named_parameters():
                param.requires_grad_(".trainable." in name or name.endswith(".trainable"))
        else:
            model = PeftModel.from_pretrained(model, latest, is_trainable=True)
        logger.info("resumed LoRA %s as the trainable adapter (its own rank/alpha/targets apply)", latest)
    elif is_trainable:
        targets = finetuning_args.lora_target_modules
        if targets is None or targets == ["all"]:
            targets = find_all_linear_modules(model, model_args.model_name)
        layers = None
        if finetuning_args.lora_layers is not None:
            total = model.config.get_text_config().num_hidden_layers
            layers = list(range(max(0, total - finetuning_args.lora_layers), total))
        config = LoraConfig(task_type=TaskType.CAUSAL_LM, inference_mode=False, r=finetuning_args.lora_r,
                            lora_alpha=finetuning_args.lora_alpha, lora_dropout=finetuning_args.lora_dropout,
                            target_modules=targets, modules_to_save=finetuning_args.additional_target,
                            layers_to_transform=layers)
        try:
            model = get_peft_model(model, config)
        except ValueError as exc:
            raise UsageError(f"--lora_target_modules {','.join(targets)}: {str(exc).splitlines()[0]}") from None
    return model


@contextmanager
def _adapter_fits(paths):
    """An adapter trained on a model of another width: one line instead of peft's size-mismatch traceback."""
    try:
        yield
    except RuntimeError as exc:
        mismatch = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), None)
        if mismatch is None:
            raise
        raise UsageError(f"--checkpoint_dir {','.join(paths or [])}: an adapter trained on a model of another "
                         f"size than --model_name_or_path ({mismatch[:200]})") from None


def _check_adapter_dir(path) -> None:
    if not (Path(path) / "adapter_config.json").is_file():
        raise UsageError(f"--checkpoint_dir {path}: no adapter_config.json (not a LoRA folder)")


def model_class(model_name: Optional[str]):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    group = model_group(model_name)
    return {"chatglm": AutoModel, "openba": AutoModelForSeq2SeqLM}.get(group, AutoModelForCausalLM)


def load_model_and_tokenizer(model_args, finetuning_args, is_trainable: bool, template: str, compute_dtype=None,
                             gradient_checkpointing: bool = False):
    """Load ``(model, tokenizer, template)``: the template named ``template`` fixes the tokenizer first (so the
    embeddings can be resized for tokens it adds), then dtype, quantisation and adapters apply."""
    from .template import get_template

    template = get_template(template)
    tokenizer = load_tokenizer(model_args, finetuning_args)
    template.fix_tokenizer(tokenizer)
    path = _model_path(model_args, finetuning_args)
    config = load_config(path, model_args.trust_remote_code, cache_dir=model_args.cache_dir,
                         revision=model_args.model_revision)
    dtype = infer_dtype(config, compute_dtype if compute_dtype is not None else model_args.compute_dtype)
    kwargs = dict(config=config, dtype=dtype, trust_remote_code=model_args.trust_remote_code,
                  cache_dir=model_args.cache_dir, revision=model_args.model_revision)
    if model_args.bits in (4, 8):
        kwargs.update(quantization_config=_quantization_config(model_args, dtype), device_map=_device_map())
    model = model_class(model_args.model_name).from_pretrained(path, **kwargs)
    if model_group(model_args.model_name) == "chatglm" and hasattr(model, "transformer"):
        model.lm_head = model.transformer.output_layer
        model._keys_to_ignore_on_save = ["lm_head.weight"]  # noqa: SLF001
    resize_embeddings(model, tokenizer)
    if is_trainable:
        model = _prepare_for_training(model, model_args, finetuning_args, gradient_checkpointing)
    with _adapter_fits(model_args.checkpoint_dir):
        model = init_adapter(model, model_args, finetuning_args, is_trainable)
    if is_trainable:
        model.train()
    else:
        model.requires_grad_(False)
        model.eval()
        if model_args.bits >= 16 and not getattr(model, "is_quantized", False):
            model = model.to(dtype)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("trainable params: %d || all params: %d || trainable%%: %.4f", trainable, total,
                100 * trainable / max(total, 1))
    return model, tokenizer, template
