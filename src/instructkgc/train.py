"""Supervised fine-tuning with the HF Trainer: ``python src/finetune.py ...`` (README: Fine-tuning).

Fixes over the original: runs without a validation split; ``--val_set_size`` not smaller than the data
skips the split with a warning; arguments used are saved to ``<output_dir>/instructkgc_args.json`` (and each
checkpoint) so inference can default to them; gradient checkpointing only when asked; cuDNN is left on.
"""
from __future__ import annotations

import os
from pathlib import Path

from ie2instruction.io import cli_errors

from .args import parse_train_args
from .run_args import write_args
from .utils import UsageError, get_logger

logger = get_logger(__name__)

SAVED_KEYS = ("model_name_or_path", "model_name", "template", "cutoff_len", "max_target_length", "finetuning_type",
              "bits", "lora_r", "lora_alpha", "lora_target_modules", "lora_layers", "additional_target",
              "checkpoint_dir", "system_prompt", "train_on_prompt", "packing", "stage")


def saved_args(model_args, data_args, training_args, finetuning_args) -> dict:
    """The argument summary written next to the trained weights."""
    merged = {}
    for obj in (model_args, data_args, finetuning_args):
        merged.update({k: v for k, v in vars(obj).items() if k in SAVED_KEYS})
    merged["bf16"], merged["fp16"] = bool(training_args.bf16), bool(training_args.fp16)
    merged["compute_dtype"] = str(model_args.compute_dtype).replace("torch.", "") if model_args.compute_dtype \
        else None
    return merged


def _datasets(tokenizer, template, data_args, training_args):
    from .data import load_records, preprocess_supervised

    train = valid = None
    if training_args.do_train:
        train = preprocess_supervised(load_records(data_args.train_file), tokenizer, data_args, template, "train")
        if len(train) == 0:
            raise UsageError(f"{data_args.train_file}: no usable training records")
    if data_args.valid_file:
        valid = preprocess_supervised(load_records(data_args.valid_file), tokenizer, data_args, template, "valid")
    elif training_args.do_eval and data_args.val_set_size > 0 and train is not None:
        if data_args.val_set_size >= len(train):
            logger.warning("--val_set_size %d is not smaller than the %d training rows: no validation split, "
                           "evaluation skipped", data_args.val_set_size, len(train))
        else:
            split = train.train_test_split(test_size=data_args.val_set_size, shuffle=True, seed=42)
            train, valid = split["train"], split["test"]
    return train, valid


def _token_count(dataset) -> int:
    """Tokens of a tokenised dataset (its ``input_ids`` lengths, summed in Arrow without loading the rows)."""
    import pyarrow.compute as pc

    return int(pc.sum(pc.list_value_length(dataset.data.column("input_ids"))).as_py() or 0)


def _time_limit(minutes: float):
    """A callback that ends training after ``minutes`` (all ranks together: each step's decision is the
    maximum over the ranks, so none is left waiting in a collective)."""
    import time

    import torch
    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        start = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            stop = torch.tensor([time.monotonic() - self.start >= minutes * 60], dtype=torch.int32,
                                device=args.device)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(stop, op=torch.distributed.ReduceOp.MAX)
            if stop.item() and state.global_step < state.max_steps:
                logger.warning("--max_train_minutes %g reached: training ends at step %d of %d", minutes,
                               state.global_step, state.max_steps)
                control.should_training_stop = True

    return TimeLimit()


def keep_freed_memory() -> bool:
    """On glibc, let this process keep the memory it frees for its next allocations (no ``mmap`` for large
    blocks, no trimming of the heap). Training on a CPU frees and allocates the same activation sizes every
    step; by default each large block goes back to the system and is page-faulted in again: measured on
    SmolLM2-135M LoRA steps on 2 cores, 1.08x faster steps and 40% less system time for 2% more peak memory.
    Returns whether it applied (not on other C libraries)."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_max = -1, -4  # mallopt parameters (malloc.h)
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))


def _no_eval(training_args) -> None:
    from transformers.trainer_utils import IntervalStrategy

    training_args.do_eval = False
    training_args.eval_strategy = IntervalStrategy.NO
    training_args.load_best_model_at_end = False


def _trainer_class(base):
    """``base`` (a Seq2SeqTrainer) whose training loss projects only the answer positions onto the vocabulary
    (``answer_loss``); evaluation, label smoothing and models without ``logits_to_keep`` keep the default."""
    from .answer_loss import answer_loss, answer_positions, takes_logits_to_keep

    class Trainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.get("labels")
            if (return_outputs or not model.training or labels is None or self.label_smoother is not None
                    or self.compute_loss_func is not None or not takes_logits_to_keep(model)):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            positions = answer_positions(labels)
            if positions.numel() == 0:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=positions)
            counted = num_items_in_batch if self.model_accepts_loss_kwargs else None
            loss = answer_loss(outputs.logits, labels, positions, counted)
            if self.args.average_tokens_across_devices and counted is not None:  # as the default compute_loss
                loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1
                               else self.args.n_gpu)
            return loss

    return Trainer


def run(argv=None) -> dict:
    """Parse arguments, train and/or evaluate; returns the metrics."""
    os.environ.setdefault("WANDB_DISABLED", "true")
    model_args, data_args, training_args, finetuning_args, _ = parse_train_args(argv)
    if training_args.device.type == "cpu":
        keep_freed_memory()
    from transformers import Seq2SeqTrainer, TrainerCallback

    from .data import make_collator, mean_batch_positions
    from .loader import load_model_and_tokenizer

    checkpointing = bool(getattr(training_args, "activation_checkpointing", False)
                         or getattr(training_args, "gradient_checkpointing", False))
    for name in ("activation_checkpointing", "gradient_checkpointing"):
        if hasattr(training_args, name):
            setattr(training_args, name, False)  # the loader enables it (once, PEFT-aware)
    model, tokenizer, template = load_model_and_tokenizer(model_args, finetuning_args, training_args.do_train,
                                                          template=data_args.template,
                                                          gradient_checkpointing=checkpointing)
    with training_args.main_process_first(desc="tokenising"):
        train, valid = _datasets(tokenizer, template, data_args, training_args)
    if valid is None:
        if training_args.do_eval:
            logger.info("no validation data: evaluation is skipped")
        _no_eval(training_args)
    summary = saved_args(model_args, data_args, training_args, finetuning_args)

    class SaveArgs(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                write_args(Path(args.output_dir) / f"checkpoint-{state.global_step}", summary)

    collator = make_collator(tokenizer, model, data_args)
    trainer = _trainer_class(Seq2SeqTrainer)(model=model, args=training_args, train_dataset=train, eval_dataset=valid,
                             data_collator=collator,
                             processing_class=tokenizer,
                             callbacks=[SaveArgs()] + ([_time_limit(finetuning_args.max_train_minutes)]
                                                       if finetuning_args.max_train_minutes else []))
    metrics: dict = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(training_args.output_dir)
            write_args(training_args.output_dir, summary)
        result.metrics.update(train_samples=len(train), train_tokens=_token_count(train),
                              train_batch_tokens=mean_batch_positions(
                                  train, collator, training_args.per_device_train_batch_size),
                              train_steps=result.global_step)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        metrics.update(result.metrics)
    if training_args.do_eval:
        eval_metrics = trainer.evaluate(metric_key_prefix="eval")
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    return metrics


def main(argv=None) -> None:
    with cli_errors():
        run(argv)
