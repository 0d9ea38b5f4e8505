"""``src/export_model.py``: merge LoRA adapter(s) into their base model and save a plain HF folder
(safetensors, tokenizer with left padding, generation config with the template's stop tokens), ready for
``src/inference.py --model_name_or_path DIR`` or ``vllm serve DIR``."""
from __future__ import annotations

import sys
from pathlib import Path

from ie2instruction.io import cli_errors

from .utils import UsageError, get_logger

logger = get_logger(__name__)


def export(model_args, data_args, finetuning_args, export_dir) -> Path:
    from .loader import load_model_and_tokenizer

    if model_args.bits in (4, 8):  # the original then silently saved only the adapter
        raise UsageError(f"--bits {model_args.bits}: adapters cannot be merged into a quantised model; "
                         "export with --bits 16 (the merged model can be quantised when loaded)")
    model, tokenizer, template = load_model_and_tokenizer(model_args, finetuning_args, is_trainable=False,
                                                          template=data_args.template,
                                                          compute_dtype=model_args.compute_dtype)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    out = Path(export_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    stops = template.stop_ids(tokenizer)
    gen = model.generation_config
    gen.eos_token_id = stops[0] if len(stops) == 1 else stops
    gen.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, max_shard_size="10GB", safe_serialization=True)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(out)  # a failure here is an error, not a warning
    logger.info("exported %s (%s) to %s", model_args.model_name_or_path,
                "+ " + ", ".join(model_args.checkpoint_dir) if model_args.checkpoint_dir else "no adapter", out)
    return out


def main(argv=None) -> None:
    from .args import parse_infer_args
    from .run_args import apply_saved_defaults

    argv = list(sys.argv[1:] if argv is None else argv)
    with cli_errors():
        model_args, data_args, _, finetuning_args, _, _ = parse_infer_args(argv)
        if not finetuning_args.export_dir:
            raise UsageError("--export_dir is required")
        apply_saved_defaults(argv, model_args, data_args)
        export(model_args, data_args, finetuning_args, finetuning_args.export_dir)
