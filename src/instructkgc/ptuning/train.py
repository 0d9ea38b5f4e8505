"""P-Tuning v2 training: ``deepspeed|torchrun|python src/finetuning_pt.py --train_path ... --model_dir ...``.

Trainable key/value prefixes of length ``--pre_seq_len`` in every layer (optionally produced by an MLP,
``--prefix_projection true``), base weights frozen, trained with the HF Trainer on converted instruction
records. After every epoch the prefixes are saved to ``<output_dir>/global_step-N`` (as the original did).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from ie2instruction.io import cli_errors

from ..utils import UsageError, get_logger

logger = get_logger(__name__)


@dataclass
class PtuningTrainArguments:
    train_path: str = field(default="data/spo_0.json", metadata={"help": "Converted instruction records "
                                                                          "(JSON array or JSONL)."})
    model_dir: Optional[str] = field(default=None, metadata={"help": "Base model folder or hub name."})
    num_train_epochs: int = field(default=20)
    train_batch_size: int = field(default=2, metadata={"help": "Micro batch per device."})
    gradient_accumulation_steps: int = field(default=1)
    output_dir: str = field(default="output_dir_pt_20/")
    log_steps: int = field(default=10)
    max_len: int = field(default=768, metadata={"help": "Maximum tokens of prompt + answer."})
    max_src_len: int = field(default=450, metadata={"help": "Maximum prompt tokens."})
    pre_seq_len: int = field(default=16, metadata={"help": "Prefix length (virtual tokens per layer)."})
    prefix_projection: bool = field(default=True, metadata={"help": "true: prefixes come from a two-layer "
                                                                    "MLP (reparameterisation); false: trained "
                                                                    "directly."})
    prefix_hidden_size: Optional[int] = field(default=None, metadata={"help": "Hidden width of the projection "
                                                                              "MLP (default: model hidden size)."})
    template: Optional[str] = field(default=None, metadata={"help": "Prompt template (default: auto when the "
                                                                    "tokenizer has a chat template, else "
                                                                    "default)."})
    learning_rate: float = field(default=2e-2, metadata={"help": "Adam learning rate (the original's 1e-5 "
                                                                 "barely moves prefixes)."})
    weight_decay: float = field(default=5e-4)
    seed: int = field(default=42)
    checkpoint_dir: Optional[str] = field(default=None, metadata={"help": "A saved global_step-N folder to "
                                                                          "continue training from."})
    deepspeed: Optional[str] = field(default=None, metadata={"help": "DeepSpeed config file (optional)."})
    local_rank: int = field(default=-1, metadata={"help": "Set by the deepspeed / torch launchers."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run Python code shipped in the model "
                                                                     "folder (auto_map); off unless given."})

    def check(self) -> None:
        if not self.model_dir:
            raise UsageError("--model_dir is required")
        if not os.path.isfile(self.train_path):
            raise UsageError(f"--train_path {self.train_path}: file not found")
        if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise UsageError(f"--output_dir {self.output_dir} is a file, not a folder")
        for name in ("num_train_epochs", "train_batch_size", "gradient_accumulation_steps", "log_steps",
                     "max_len", "max_src_len", "pre_seq_len"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be at least 1")
        if self.max_src_len >= self.max_len:
            raise UsageError("--max_src_len must be smaller than --max_len")
        if self.deepspeed:
            from ..args import deepspeed_zero_stage

            if deepspeed_zero_stage(self.deepspeed) == 3:
                raise UsageError("--deepspeed: ZeRO stage 3 is not supported for P-Tuning (it partitions the "
                                 "prefixes); use stage 1 or 2")


def parse_args(argv=None) -> PtuningTrainArguments:
    from ..args import parse_dataclasses

    (args,) = parse_dataclasses((PtuningTrainArguments,), argv)
    args.check()
    return args


def _training_arguments(args: PtuningTrainArguments, dtype):
    import torch
    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.num_train_epochs,
        per_device_train_batch_size=args.train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0,
        lr_scheduler_type="linear", logging_steps=args.log_steps,
        logging_first_step=True, save_strategy="no", report_to="none", remove_unused_columns=False,
        seed=args.seed, use_cpu=not on_gpu, bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16, deepspeed=args.deepspeed, disable_tqdm=True,
    )


def train(args: PtuningTrainArguments):
    """Train the prefixes; returns the trained peft model (its base model is unchanged)."""
    from transformers import Trainer, TrainerCallback, set_seed

    from ..args import DataArguments
    from ..data import load_records, make_collator, preprocess_supervised
    from ..run_args import fill_from_checkpoint
    from .common import cuda_dtype, load_base
    from .prefix import add_prefix, check_checkpoint, load_prefix, save_prefix

    set_seed(args.seed)
    records = load_records(args.train_path)  # bad input fails before any model loads
    saved = check_checkpoint(args.checkpoint_dir, args.model_dir, args.trust_remote_code) if args.checkpoint_dir else None
    if saved is not None:
        fill_from_checkpoint(args.checkpoint_dir, args, ("template",), {"template"} if args.template else set())
    dtype = cuda_dtype()
    model, tokenizer, template = load_base(args.model_dir, dtype, args.template, args.trust_remote_code)
    if saved is not None:
        if bool(saved.get("prefix_projection")) != args.prefix_projection or \
                saved.get("num_virtual_tokens") != args.pre_seq_len:
            logger.warning("continuing from %s: its pre_seq_len %s / prefix_projection %s apply",
                           args.checkpoint_dir, saved.get("num_virtual_tokens"), saved.get("prefix_projection"))
        model = load_prefix(model, args.checkpoint_dir, is_trainable=True)
    else:
        model = add_prefix(model, args.pre_seq_len, args.prefix_projection, args.prefix_hidden_size)
    model.print_trainable_parameters()

    data_args = DataArguments(template=template.name, cutoff_len=args.max_len,
                              max_target_length=args.max_len - args.max_src_len, packing=False)
    train_set = preprocess_supervised(records, tokenizer, data_args, template, "train",
                                      max_prompt_len=args.max_src_len)
    if len(train_set) == 0:
        raise UsageError(f"{args.train_path}: no usable training records")
    # Right padding: peft numbers real tokens from the prefix length on, as generation does.
    tokenizer.padding_side = "right"
    collator = make_collator(tokenizer, model, data_args)
    meta = {"model_dir": args.model_dir, "template": template.name, "max_len": args.max_len,
            "max_src_len": args.max_src_len, "pre_seq_len": model.active_peft_config.num_virtual_tokens,
            "prefix_projection": model.active_peft_config.prefix_projection, "train_path": args.train_path}

    class SavePerEpoch(TrainerCallback):
        def on_epoch_end(self, targs, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = os.path.join(args.output_dir, f"global_step-{state.global_step}")
                save_prefix(model, folder, meta)
                logger.info("saved the prefixes to %s", folder)

    trainer = Trainer(model=model, args=_training_arguments(args, dtype), train_dataset=train_set,
                      data_collator=collator, callbacks=[SavePerEpoch()])
    result = trainer.train()
    trainer.log_metrics("train", result.metrics)
    if trainer.is_world_process_zero():
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
    tokenizer.padding_side = "left"
    model.eval()
    return model


def main(argv=None) -> None:
    os.environ.setdefault("WANDB_DISABLED", "true")
    with cli_errors():
        train(parse_args(argv))
