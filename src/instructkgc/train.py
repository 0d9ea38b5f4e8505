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
              "bits", "lora_r", "lora_alpha", "lora_target_modules", "additional_target", "checkpoint_dir",
              "system_prompt", "train_on_prompt", "packing", "stage")


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


class FittedSchedule:
    """A learning-rate factor (a ``LambdaLR`` entry) whose schedule can be made to end at an earlier step than
    planned: after ``refit(step, end)``, steps ``step..end`` walk the rest of the original schedule
    (``step``'s position onward to its planned end), so the change is continuous and cosine or linear still
    decay to their end value."""

    def __init__(self, factor, planned_end: int):
        self.factor, self.planned_end = factor, planned_end
        self.anchor, self.position, self.rate = 0, 0.0, 1.0

    def at(self, step: int) -> float:
        """Where ``step`` is on the original schedule."""
        return self.position + (step - self.anchor) * self.rate

    def refit(self, step: int, end: int) -> None:
        position = self.at(step)
        self.anchor, self.position = step, position
        self.rate = (self.planned_end - position) / max(end - step, 1)

    def __call__(self, step: int) -> float:
        return self.factor(min(self.at(step), self.planned_end))


def _time_limit(minutes: float):
    """A callback for ``--max_train_minutes``: ends training at the first step past ``minutes`` and, from the
    time the steps have taken so far, moves the end of the learning-rate schedule to the step that will end in
    time whenever the planned steps would not fit (re-checked ten times over a run; moved back up to the planned
    end when the steps speed up), so a cosine schedule still decays to its end instead of being cut off high. All ranks decide from the same
    numbers (the slowest rank's clock), so none is left waiting in a collective."""
    import time

    import torch
    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        start, first_step, first_seconds, end = 0.0, None, 0.0, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.end = time.monotonic(), state.max_steps

        def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
            elapsed = torch.tensor([time.monotonic() - self.start], dtype=torch.float64, device=args.device)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(elapsed, op=torch.distributed.ReduceOp.MAX)
            seconds, step = elapsed.item(), state.global_step
            if self.first_step is None:  # the first step carries one-time costs: timed from its end
                self.first_step, self.first_seconds = step, seconds
            elif step < self.end and step % max(1, state.max_steps // 10) == 0:
                per_step = (seconds - self.first_seconds) / (step - self.first_step)
                fits = step + int((minutes * 60 - seconds) / max(per_step, 1e-9))
                end = min(max(fits, step + 1), state.max_steps)
                if end != self.end and self._fit(lr_scheduler, step, end, state.max_steps):
                    logger.warning("--max_train_minutes %g: at %.2f s per step, the learning-rate schedule now "
                                   "ends at step %d (planned %d)", minutes, per_step, self.end, state.max_steps)
            if step >= self.end or seconds >= minutes * 60:
                if step < state.max_steps:
                    logger.warning("--max_train_minutes %g: training ends at step %d of %d", minutes, step,
                                   state.max_steps)
                control.should_training_stop = True

        def _fit(self, scheduler, step: int, end: int, planned: int) -> bool:
            lambdas = getattr(scheduler, "lr_lambdas", None)
            if not lambdas:  # not a LambdaLR: the limit alone holds the time
                return False
            for i, factor in enumerate(lambdas):
                if not isinstance(factor, FittedSchedule):
                    lambdas[i] = factor = FittedSchedule(factor, planned)
                factor.refit(step, end)
            self.end = end
            return True

    return TimeLimit()


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
    from transformers import Seq2SeqTrainer, TrainerCallback

    from .data import make_collator
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

    trainer = _trainer_class(Seq2SeqTrainer)(model=model, args=training_args, train_dataset=train, eval_dataset=valid,
                             data_collator=make_collator(tokenizer, model, data_args, training_args),
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
