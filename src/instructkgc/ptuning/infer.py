"""P-Tuning v2 inference: ``python src/inference_pt.py --test_path ... --ori_model_dir BASE --model_dir CKPT``.

Writes the same JSONL as ``src/inference.py`` (each input record, keys kept, with ``output`` set to the
model's answer), so ``ie2instruction/eval_func.py`` scores it. Generation is the shared HF engine
(``instructkgc.infer``) driven through :class:`~instructkgc.ptuning.prefix.PrefixGenerator`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ie2instruction.io import cli_errors

from ..utils import UsageError, get_logger

logger = get_logger(__name__)


@dataclass
class PtuningInferArguments:
    test_path: str = field(default="data/valid.json", metadata={"help": "Instruction records (JSON or JSONL)."})
    device: str = field(default="0", metadata={"help": "CUDA device index, or cpu (no GPU: cpu)."})
    ori_model_dir: Optional[str] = field(default=None, metadata={"help": "The base model the prefixes were "
                                                                         "trained on."})
    model_dir: Optional[str] = field(default=None, metadata={"help": "A saved global_step-N folder."})
    max_len: Optional[int] = field(default=None, metadata={"help": "Prompt + answer tokens (default: the "
                                                                   "training value)."})
    max_src_len: Optional[int] = field(default=None, metadata={"help": "Prompt tokens; longer prompts lose the "
                                                                       "start of their input (default: the "
                                                                       "training value)."})
    max_new_tokens: Optional[int] = field(default=None, metadata={"help": "Default: max_len - max_src_len."})
    output_file: Optional[str] = field(default=None, metadata={"help": "Default: <model_dir>/"
                                                                       "<test file stem>_output.json."})
    batch_size: int = field(default=16)
    template: Optional[str] = field(default=None, metadata={"help": "Default: the template used in training."})
    resume: bool = field(default=False, metadata={"help": "Keep the answers already in output_file and "
                                                          "continue after them."})
    constrained_decoding: bool = field(default=False, metadata={"help": "JSON-schema constrained decoding "
                                                                        "(xgrammar)."})
    local_rank: int = field(default=-1, metadata={"help": "Unused (set by launchers)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run Python code shipped in the model "
                                                                     "folder (auto_map); off unless given."})

    def resolve(self) -> None:
        """Fill defaults from the checkpoint's training settings (``instructkgc_args.json``) and check."""
        from ..run_args import fill_from_checkpoint

        names = {"ori_model_dir": "model_dir", "max_len": "max_len", "max_src_len": "max_src_len",
                 "template": "template"}
        fill_from_checkpoint(self.model_dir, self, names, {k for k in names if getattr(self, k)})
        if not self.ori_model_dir:
            raise UsageError("--ori_model_dir is required")
        self.max_len = self.max_len or 768
        self.max_src_len = self.max_src_len or 450
        if self.max_new_tokens is None:
            self.max_new_tokens = self.max_len - self.max_src_len
        if self.max_src_len < 1 or self.max_new_tokens < 1:
            raise UsageError("--max_src_len must be at least 1 and smaller than --max_len")
        if self.batch_size < 1:
            raise UsageError("--batch_size must be at least 1")
        if not self.output_file:
            self.output_file = str(Path(self.model_dir) / f"{Path(self.test_path).stem}_output.json")


def parse_args(argv=None) -> PtuningInferArguments:
    from ..args import parse_dataclasses

    (args,) = parse_dataclasses((PtuningInferArguments,), argv)
    if not args.model_dir:
        raise UsageError("--model_dir (the P-Tuning checkpoint) is required")
    return args


def _device(name: str):
    import torch

    if str(name).lower() == "cpu" or not torch.cuda.is_available():
        if str(name).lower() != "cpu":
            logger.info("no GPU found: --device %s runs on the CPU", name)
        return torch.device("cpu")
    index = str(name).split(",")[0].strip()
    if not index.isdigit() or int(index) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: no such GPU ({torch.cuda.device_count()} visible)")
    return torch.device(f"cuda:{index}")


def load_ptuned(model_dir: str, ori_model_dir: str, device=None, template: Optional[str] = None,
                trust_remote_code: bool = False):
    """``(generator, tokenizer, template)``: base model + checked prefixes, ready for the HF engine."""
    from .common import cuda_dtype, load_base
    from .prefix import PrefixGenerator, check_checkpoint, load_prefix

    check_checkpoint(model_dir, ori_model_dir, trust_remote_code, "--ori_model_dir")
    dtype = cuda_dtype() if device is None or device.type == "cuda" else None
    model, tokenizer, template = load_base(ori_model_dir, dtype, template, trust_remote_code, "--ori_model_dir")
    model = load_prefix(model, model_dir, is_trainable=False)
    if device is not None:
        model.to(device)
    model.eval()
    return PrefixGenerator(model), tokenizer, template


def run(args: PtuningInferArguments):
    """Predict every record of ``test_path`` into ``output_file``; returns the counts."""
    from ..infer.engine import SamplingSettings
    from ..infer.hf_engine import HFEngine
    from ..infer.records import check_files, predict_file
    from ..predict import report
    from ..template import build_prompt_ids
    from .prefix import read_checkpoint_config

    read_checkpoint_config(args.model_dir)
    args.resolve()
    if not os.path.isfile(args.test_path):
        raise UsageError(f"--test_path {args.test_path}: file not found")
    check_files(args.test_path, args.output_file, args.resume, "--test_path")  # before the model is loaded
    generator, tokenizer, template = load_ptuned(args.model_dir, args.ori_model_dir, _device(args.device),
                                                 args.template, args.trust_remote_code)
    engine = HFEngine(generator, tokenizer, template.stop_ids(tokenizer),
                      SamplingSettings(max_new_tokens=args.max_new_tokens), batch_size=args.batch_size,
                      constrained=args.constrained_decoding)
    try:
        counts = predict_file(engine, lambda record: build_prompt_ids(template, tokenizer, record, args.max_src_len),
                              args.test_path, args.output_file, resume=args.resume,
                              constrained=args.constrained_decoding, window=max(64, 8 * args.batch_size))
    finally:
        engine.close()
    report(counts, args.output_file, cutoff_flag="--max_src_len")
    return counts


def main(argv=None) -> None:
    with cli_errors():
        run(parse_args(argv))
