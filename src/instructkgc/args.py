"""Argument dataclasses of ``src/finetune.py``, ``src/inference.py`` and ``src/export_model.py`` and their
checks, parsed by ``transformers.HfArgumentParser`` (README: Fine-tuning, Inference).

``parse_train_args`` / ``parse_infer_args`` accept an argv list (default ``sys.argv[1:]``) whose first item may
be a ``.json`` / ``.yaml`` argument file (a recipe under ``configs/``); flags after it override the file.
Invalid combinations are refused up front: one ``error:`` line, exit status 2.

Every field is read by the code, except those of :class:`CompatArguments`: flags of the original command
lines that are accepted so old scripts keep running, and ignored with one warning.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from transformers import HfArgumentParser, Seq2SeqTrainingArguments

from .distributed import RayArguments
from .run_args import ARGS_FILE
from .utils import UsageError, default_lora_targets, get_logger, parse_module_list, read_json_file

logger = get_logger(__name__)

_SPLIT = lambda s: [x.strip() for x in s.split(",") if x.strip()] if isinstance(s, str) else s  # noqa: E731


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Model path or hub name."})
    model_name: str = field(default="llama", metadata={"help": "Architecture name: llama, baichuan, chatglm, "
                                                               "qwen, qwen2, moss, falcon, mistral, ..."})
    cache_dir: Optional[str] = field(default=None)
    use_fast_tokenizer: bool = field(default=True)
    trust_remote_code: bool = field(default=False, metadata={"help": "Run Python code shipped in the model "
                                                                     "folder (auto_map); off unless given."})
    model_revision: str = field(default="main")
    split_special_tokens: bool = field(default=False)
    bits: int = field(default=16, metadata={"help": "4 or 8: QLoRA via bitsandbytes; 16/32: no quantisation."})
    double_quant: bool = field(default=True)
    quant_type: str = field(default="nf4", metadata={"help": "nf4 or fp4."})
    checkpoint_dir: Optional[str] = field(default=None, metadata={"help": "Comma-separated LoRA (or full) "
                                                                          "checkpoint folders."})

    def __post_init__(self):
        self.checkpoint_dir = _SPLIT(self.checkpoint_dir) or None
        self.compute_dtype = None  # set by parse_*_args from --bf16 / --fp16


@dataclass
class DataArguments:
    train_file: Optional[str] = field(default=None, metadata={"help": "Training data, JSON array or JSONL."})
    valid_file: Optional[str] = field(default=None, metadata={"help": "Validation data, JSON array or JSONL."})
    preprocessing_num_workers: Optional[int] = field(default=None)
    template: str = field(default="alpaca", metadata={"help": "Prompt template name, or 'auto' for the "
                                                              "tokenizer's chat_template."})
    system_prompt: Optional[str] = field(default=None, metadata={"help": "Override the template's default "
                                                                         "system text (a 'system' column wins)."})
    max_target_length: int = field(default=256, metadata={"help": "Floor of the target budget within cutoff_len."})
    cutoff_len: int = field(default=1024, metadata={"help": "Maximum tokens of prompt + response."})
    val_set_size: int = field(default=1000, metadata={"help": "Rows split off the train file for validation "
                                                              "when no valid_file is given."})
    ignore_pad_token_for_loss: bool = field(default=True)
    train_on_prompt: bool = field(default=False)
    packing: bool = field(default=True, metadata={"help": "Padding-free packing of several examples per row "
                                                          "with restarted position ids (false: the plain padded "
                                                          "DataCollatorForSeq2Seq)."})


@dataclass
class FinetuningArguments:
    num_layer_trainable: int = field(default=3)
    name_module_trainable: str = field(default="mlp")
    lora_r: int = field(default=8)
    lora_alpha: Optional[float] = field(default=None, metadata={"help": "Default: 2 * lora_r."})
    lora_dropout: float = field(default=0.1)
    lora_target_modules: Optional[str] = field(default=None, metadata={"help": "q_proj,v_proj or "
                                                                               "['q_proj','v_proj'] or all."})
    lora_layers: Optional[int] = field(default=None, metadata={
        "help": "LoRA on the last N decoder layers only (default: all). The backward pass then stops below them: "
                "a step with the top half of SmolLM2's layers took ~0.7x the time of one with all."})
    additional_target: Optional[str] = field(default=None, metadata={"help": "Comma-separated modules trained "
                                                                             "fully (LoRA modules_to_save)."})
    resume_lora_training: bool = field(default=True)
    stage: Literal["pt", "sft", "rm", "ppo", "dpo", "sft-custom"] = field(
        default="sft", metadata={"help": "Only sft (or sft-custom) is implemented; the others are refused."})
    finetuning_type: Literal["lora", "freeze", "full"] = field(default="lora")
    upcast_layernorm: bool = field(default=False)
    neft_alpha: float = field(default=0)
    export_dir: Optional[str] = field(default=None)
    max_train_minutes: Optional[float] = field(default=None, metadata={
        "help": "Stop training once this many minutes have passed (checked after each step; the model of the "
                "last step is saved). A time budget that holds even where the step estimate is off."})

    def __post_init__(self):
        self.name_module_trainable = _SPLIT(self.name_module_trainable)
        self.additional_target = _SPLIT(self.additional_target) or None
        if self.lora_alpha is None:
            self.lora_alpha = self.lora_r * 2.0
        if self.lora_layers is not None and (self.lora_layers < 1 or self.finetuning_type != "lora"):
            raise UsageError(f"--lora_layers {self.lora_layers}: give a number of layers of at least 1, "
                             "with --finetuning_type lora")
        self.lora_target_modules = parse_module_list(self.lora_target_modules)


@dataclass
class GenerationArguments:
    """Generation settings; ``--use_cache`` is shared with TrainingArguments (transformers 5 owns the flag)."""

    max_new_tokens: int = field(default=256)
    min_new_tokens: Optional[int] = field(default=None)
    do_sample: bool = field(default=False)
    num_beams: int = field(default=1)
    temperature: float = field(default=1.0)
    top_k: int = field(default=50)
    top_p: float = field(default=1.0)
    repetition_penalty: float = field(default=1.0)
    length_penalty: float = field(default=1.0)
    no_repeat_ngram_size: int = field(default=0)


@dataclass
class InferArguments(RayArguments):  # --ray, --num_workers, --gpus_per_worker: instructkgc.distributed
    gpu_memory_utilization: float = field(default=0.90, metadata={"help": "Share of GPU memory vLLM may use."})
    input_file: Optional[str] = field(default=None)
    output_file: Optional[str] = field(default=None)
    batch_size: int = field(default=16, metadata={"help": "Prompts generated together."})
    resume: bool = field(default=False, metadata={"help": "Skip records already in output_file."})
    backend: Literal["hf", "vllm"] = field(default="hf")
    constrained_decoding: bool = field(default=False, metadata={"help": "JSON-schema constrained decoding."})
    grounded_decoding: bool = field(default=True, metadata={
        "help": "With --constrained_decoding: entities, heads/tails, triggers and arguments can only be spans "
                "of the record's input text."})
    tensor_parallel_size: int = field(default=1)


@dataclass
class TrainingArguments(Seq2SeqTrainingArguments):
    """HF ``Seq2SeqTrainingArguments`` with the original's defaults; ``--evaluation_strategy`` is an alias."""

    output_dir: Optional[str] = field(default="output")
    resume_from_checkpoint: Optional[str] = field(default=None)
    load_best_model_at_end: bool = field(default=False)
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Start over in a non-empty output_dir."})
    remove_unused_columns: Optional[bool] = field(default=False)
    report_to: Optional[str] = field(default="none")
    logging_steps: float = field(default=2)
    evaluation_strategy: Optional[str] = field(default=None, metadata={"help": "Alias of --eval_strategy."})
    group_by_length: bool = field(default=False, metadata={"help": "Alias of --train_sampling_strategy "
                                                                   "group_by_length."})

    def __post_init__(self):
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.group_by_length:
            self.train_sampling_strategy = "group_by_length"
        self._without_gpu()
        super().__post_init__()

    def _without_gpu(self) -> None:
        """Let GPU command lines run on a machine without an accelerator: bf16 → CPU autocast, fp16 → fp32, and
        several processes (torchrun, deepspeed) train together on the CPU. Without ``use_cpu`` there,
        transformers gives every process a world of one: each trains on all the data and writes the same
        output files at the same time."""
        import torch

        if torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()):
            return
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.use_cpu:
            logger.info("no GPU found: the %s processes train together on the CPU (use_cpu)",
                        os.environ["WORLD_SIZE"])
            self.use_cpu = True
        if self.bf16 and not self.use_cpu:
            logger.warning("no GPU found: --bf16 runs as CPU bf16 autocast (use_cpu)")
            self.use_cpu = True
        if self.fp16:
            logger.warning("no GPU found: --fp16 is ignored, training in fp32")
            self.fp16 = False


@dataclass
class CompatArguments:
    """Flags of the original command lines that do nothing here. They are accepted so old scripts keep running,
    and one warning names those given ("accepted for compatibility, ignored")."""

    use_auth_token: bool = field(default=False)
    swap_space: int = field(default=4, metadata={"help": "Ignored: vLLM 0.32 has no CPU swap space."})
    adam8bit: bool = field(default=False)
    predict_file: Optional[str] = field(default=None)
    overwrite_cache: bool = field(default=False)
    cache_path: Optional[str] = field(default=None)
    max_source_length: int = field(default=512, metadata={"help": "Ignored: the prompt budget follows from "
                                                                  "--cutoff_len and --max_target_length."})
    pad_to_max_length: bool = field(default=False)
    language: str = field(default="zh")
    id_text: str = field(default="input")
    plot_loss: bool = field(default=False)
    loss_scale: float = field(default=1.0)
    dpo_beta: float = field(default=0.1)
    ppo_logger: Optional[str] = field(default=None)
    ppo_score_norm: bool = field(default=False)
    ppo_target: float = field(default=6.0)
    ppo_whiten_rewards: bool = field(default=False)
    ref_model: Optional[str] = field(default=None)
    ref_model_checkpoint: Optional[str] = field(default=None)
    ref_model_quantization_bit: Optional[int] = field(default=None)
    reward_model: Optional[str] = field(default=None)
    reward_model_checkpoint: Optional[str] = field(default=None)
    reward_model_quantization_bit: Optional[int] = field(default=None)
    reward_model_type: str = field(default="lora")
    max_length: int = field(default=512, metadata={"help": "Ignored: use --max_new_tokens."})
    num_beam_groups: int = field(default=1)
    penalty_alpha: Optional[float] = field(default=None)
    typical_p: float = field(default=1.0)
    diversity_penalty: float = field(default=0.0)
    mode: str = field(default="w", metadata={"help": "Ignored: --resume continues an output file."})
    prompt_text: str = field(default="", metadata={"help": "P-Tuning training: ignored."})
    gen_mode: str = field(default="greedy", metadata={"help": "Ignored: use --do_sample / --num_beams."})


TRAIN_CLASSES = (ModelArguments, DataArguments, TrainingArguments, FinetuningArguments, GenerationArguments)
INFER_CLASSES = TRAIN_CLASSES + (InferArguments,)
COMPAT_FLAGS = tuple(CompatArguments.__dataclass_fields__)


def _file_flags(path: str) -> list[str]:
    """The flags an argument file (``.json`` / ``.yaml`` mapping of flag -> value) stands for."""
    if not os.path.isfile(path):
        raise UsageError(f"{path}: argument file not found")
    if path.endswith(".json"):
        values = read_json_file(path)
    else:
        import yaml

        try:
            values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path}: an argument file is a mapping of flag names to values")
    flags = []
    for key, value in values.items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, list):  # the list flags (checkpoint_dir, lora_target_modules, ...) take a,b,c
            value = ",".join(map(str, value))
        elif isinstance(value, dict):
            value = json.dumps(value)
        if value is not None:
            flags += [f"--{key}", str(value)]
    return flags


def parse_dataclasses(classes, argv=None):
    """Parse ``argv`` (default ``sys.argv[1:]``; an argument file may come first, flags after it win) into
    ``classes``; the compatibility flags are parsed too, warned about once, and dropped. UsageError on
    unknown flags or refused values."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".json", ".yaml", ".yml")):
        argv = _file_flags(argv[0]) + argv[1:]
    try:
        parsed = HfArgumentParser(classes + (CompatArguments,)).parse_args_into_dataclasses(args=argv)
    except ValueError as exc:  # unknown flags, values __post_init__ refuses
        raise UsageError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    given = [name for name in COMPAT_FLAGS if f"--{name}" in {a.split("=", 1)[0] for a in argv}]
    if given:
        logger.warning("%s: accepted for compatibility, ignored", ", ".join(f"--{n}" for n in given))
    return parsed[:-1]


def deepspeed_zero_stage(deepspeed) -> int:
    """ZeRO stage of a DeepSpeed config given as a path or a dict (0 when absent)."""
    if not deepspeed:
        return 0
    config = deepspeed
    if not isinstance(config, dict):
        if not Path(str(deepspeed)).is_file():
            raise UsageError(f"--deepspeed {deepspeed}: config file not found")
        config = read_json_file(deepspeed)
    return int((config.get("zero_optimization") or {}).get("stage", 0) or 0)


def _check_common(model_args, data_args, finetuning_args):
    from .template import get_template

    if model_args.bits not in (4, 8, 16, 32):
        raise UsageError(f"--bits must be 4, 8, 16 or 32, got {model_args.bits}")
    if model_args.quant_type not in ("nf4", "fp4"):
        raise UsageError(f"--quant_type must be nf4 or fp4, got {model_args.quant_type}")
    if model_args.checkpoint_dir and len(model_args.checkpoint_dir) > 1 and finetuning_args.finetuning_type != "lora":
        raise UsageError("several --checkpoint_dir folders need --finetuning_type lora")
    get_template(data_args.template)  # UsageError for an unknown name
    if model_args.bits in (4, 8):
        if finetuning_args.finetuning_type != "lora":
            raise UsageError(f"--bits {model_args.bits} (QLoRA) needs --finetuning_type lora")
        import importlib.util
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UsageError(f"--bits {model_args.bits} needs bitsandbytes: pip install 'instructkgc[qlora]'")
    if model_args.model_name_or_path is None:
        raise UsageError("--model_name_or_path is required")


def check_train_args(model_args, data_args, training_args, finetuning_args) -> None:
    """Refuse invalid combinations (raises ``UsageError``; ``InputError`` for a training file that is not JSON)."""
    from ie2instruction.io import read_records

    _check_common(model_args, data_args, finetuning_args)
    if finetuning_args.stage not in ("sft", "sft-custom"):
        raise UsageError(f"--stage {finetuning_args.stage} is not implemented; use --stage sft")
    if training_args.predict_with_generate:
        raise UsageError("--predict_with_generate is for inference (src/inference.py), not src/finetune.py")
    if training_args.do_predict:
        raise UsageError("--do_predict is for inference (src/inference.py), not src/finetune.py")
    if training_args.do_train:
        if not data_args.train_file:
            raise UsageError("--do_train needs --train_file")
    for name in ("train_file", "valid_file"):
        path = getattr(data_args, name)
        if path and not os.path.isfile(path):
            raise UsageError(f"--{name} {path}: file not found")
        if path and next(read_records(path), None) is None:
            raise UsageError(f"--{name} {path}: no records, the file is empty")
    if os.path.exists(training_args.output_dir) and not os.path.isdir(training_args.output_dir):
        raise UsageError(f"--output_dir {training_args.output_dir} is a file, not a folder")
    if data_args.cutoff_len <= 0:
        raise UsageError("--cutoff_len must be positive")
    if data_args.val_set_size < 0:
        raise UsageError("--val_set_size must be >= 0")
    if training_args.deepspeed:
        import importlib.util
        if importlib.util.find_spec("deepspeed") is None:
            raise UsageError("--deepspeed needs deepspeed: pip install 'instructkgc[deepspeed]'")
        if model_args.bits in (4, 8) and deepspeed_zero_stage(training_args.deepspeed) == 3:
            raise UsageError(f"--bits {model_args.bits} cannot be combined with DeepSpeed ZeRO-3")


def _finish_common(model_args, finetuning_args) -> None:
    if finetuning_args.lora_target_modules is None:
        finetuning_args.lora_target_modules = default_lora_targets(model_args.model_name)


def _dtype(training_args):
    import torch

    if getattr(training_args, "bf16", False):
        return torch.bfloat16
    if getattr(training_args, "fp16", False):
        return torch.float16
    return None


def _distributed(training_args) -> bool:
    """Whether this process is one of several (torchrun, accelerate, deepspeed). Under torchrun transformers 5
    leaves ``local_rank`` at -1, so the parallel mode is asked instead (once the devices are set up)."""
    from transformers.training_args import ParallelMode

    _ = training_args.device  # sets up the distributed state (the Trainer would do it next anyway)
    return training_args.parallel_mode == ParallelMode.DISTRIBUTED


def _last_checkpoint(output_dir: str) -> Optional[str]:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def _refusal_forgets_deepspeed(parse):
    """``parse``, unregistering the DeepSpeed config of arguments it refuses: transformers registers it
    process-wide when ``TrainingArguments`` is built, and while that object lives (an exception's traceback keeps
    it) every later model load in the process would follow it (ZeRO-3: partitioned at load)."""
    @functools.wraps(parse)
    def checked(argv=None):
        try:
            return parse(argv)
        except Exception:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
            raise
    return checked


@_refusal_forgets_deepspeed
def parse_train_args(argv=None):
    """Parse and check training arguments.

    Returns ``(model_args, data_args, training_args, finetuning_args, generating_args)``; raises UsageError
    on invalid input.
    """
    model_args, data_args, training_args, finetuning_args, generating_args = parse_dataclasses(TRAIN_CLASSES, argv)
    check_train_args(model_args, data_args, training_args, finetuning_args)
    _finish_common(model_args, finetuning_args)
    if not (training_args.bf16 or training_args.fp16):
        logger.info("training in fp32 (pass --bf16 or --fp16 on a GPU for speed)")
    if finetuning_args.finetuning_type == "lora" and _distributed(training_args):
        training_args.ddp_find_unused_parameters = False  # every LoRA weight is used; True breaks checkpointing
        logger.info("distributed LoRA training over %d processes: ddp_find_unused_parameters=False",
                    training_args.world_size)
    if (training_args.do_train and training_args.resume_from_checkpoint is None
            and not training_args.overwrite_output_dir and os.path.isdir(training_args.output_dir)):
        last = _last_checkpoint(training_args.output_dir)
        if last is not None:
            training_args.resume_from_checkpoint = last
            logger.info("resuming from the last checkpoint %s (pass --overwrite_output_dir to start over)", last)
        elif any(p.name != ARGS_FILE for p in Path(training_args.output_dir).iterdir()):
            raise UsageError(f"--output_dir {training_args.output_dir} is not empty and holds no checkpoint; "
                             "pass --overwrite_output_dir")
    model_args.compute_dtype = _dtype(training_args)
    from transformers import set_seed

    set_seed(training_args.seed)
    return model_args, data_args, training_args, finetuning_args, generating_args


@_refusal_forgets_deepspeed
def parse_infer_args(argv=None):
    """Parse and check inference arguments.

    Returns ``(model_args, data_args, training_args, finetuning_args, generating_args, infer_args)``.
    Unlike the original, ``--bf16`` / ``--fp16`` set the compute dtype here too.
    """
    parsed = parse_dataclasses(INFER_CLASSES, argv)
    model_args, data_args, training_args, finetuning_args, generating_args, infer_args = parsed
    _check_common(model_args, data_args, finetuning_args)
    if infer_args.batch_size < 1:
        raise UsageError("--batch_size must be >= 1")
    if infer_args.input_file and not os.path.isfile(infer_args.input_file):
        raise UsageError(f"--input_file {infer_args.input_file}: file not found")
    _finish_common(model_args, finetuning_args)
    model_args.compute_dtype = _dtype(training_args)
    return model_args, data_args, training_args, finetuning_args, generating_args, infer_args
