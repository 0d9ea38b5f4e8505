"""Loading the frozen base model and choosing the template, shared by P-Tuning training and inference."""
from __future__ import annotations

from typing import Optional


def load_base(model_dir: str, dtype=None, template: Optional[str] = None, trust_remote_code: bool = False,
              flag: str = "--model_dir"):
    """``(model, tokenizer, template)``: the frozen base model in eval mode, the tokenizer fixed for the
    template (``template`` None: ``auto`` when the tokenizer has a chat template, else ``default``)."""
    from ..args import FinetuningArguments, ModelArguments
    from ..loader import load_config, load_model_and_tokenizer, load_tokenizer

    config = load_config(model_dir, trust_remote_code, flag)
    model_args = ModelArguments(model_name_or_path=model_dir, model_name=getattr(config, "model_type", "other"),
                                trust_remote_code=trust_remote_code)
    finetuning_args = FinetuningArguments(finetuning_type="full")
    if template is None:
        tokenizer = load_tokenizer(model_args)
        template = "auto" if getattr(tokenizer, "chat_template", None) else "default"
    return load_model_and_tokenizer(model_args, finetuning_args, is_trainable=False, template=template,
                                    compute_dtype=dtype)


def cuda_dtype():
    """bf16 on a GPU that supports it, fp16 on other GPUs, None (fp32) on CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
