"""Arguments: every field is read by something, ignored original flags warn once, argument files + overrides."""
import dataclasses
import logging
import re
from pathlib import Path

import pytest
from transformers import Seq2SeqTrainingArguments

from instructkgc import args as A
from instructkgc.infer.engine import SamplingSettings
from instructkgc.ptuning.infer import PtuningInferArguments
from instructkgc.ptuning.train import PtuningTrainArguments
from instructkgc.utils import UsageError

SRC = Path(A.__file__).resolve().parent
# Read by the vLLM engine once it passes them on (issue 14); set by the deepspeed launcher (--local_rank=N).
NOT_YET_READ = {"local_rank"}


def _code() -> str:
    """All model-side code, with the dataclass declarations (``name: type = field(``) removed."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in SRC.rglob("*.py"))
    return re.sub(r"(?m)^\s+\w+: [^=\n]+= field\(.*$", "", text)


def _read(name: str, code: str) -> bool:
    return re.search(rf"\.{name}\b|getattr\([^,]+, \"{name}\"", code) is not None


def test_every_argument_field_is_read():
    code = _code()
    assert not _read("a_field_nothing_reads", code)  # the check can fail
    base = {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments)}
    unread = []
    for cls in (A.ModelArguments, A.DataArguments, A.FinetuningArguments, A.InferArguments, A.TrainingArguments,
                PtuningTrainArguments, PtuningInferArguments):
        for f in dataclasses.fields(cls):
            if f.name in base or f.name in NOT_YET_READ:
                continue  # transformers' own training arguments
            if not _read(f.name, code):
                unread.append(f"{cls.__name__}.{f.name}")
    # GenerationArguments reach the engines through SamplingSettings.from_args, field by field.
    unread += [f"GenerationArguments.{f.name}" for f in dataclasses.fields(A.GenerationArguments)
               if f.name not in SamplingSettings.__dataclass_fields__]
    assert unread == [], "fields nothing reads (move them to CompatArguments or use them): " + ", ".join(unread)


def test_compatibility_flags_are_accepted_and_warned_about_once():
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("instructkgc").addHandler(handler)
    try:
        parsed = A.parse_dataclasses(A.INFER_CLASSES, ["--max_source_length", "400", "--language=en",
                                                       "--typical_p", "0.5", "--cutoff_len", "300"])
    finally:
        logging.getLogger("instructkgc").removeHandler(handler)
    assert [m for m in seen if "compatibility" in m] == [
        "--max_source_length, --language, --typical_p: accepted for compatibility, ignored"]
    assert len(parsed) == len(A.INFER_CLASSES) and parsed[1].cutoff_len == 300


def test_argument_file_then_overriding_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: m\ntemplate: qwen\ncutoff_len: 700\nbf16: false\n"
                      "lora_target_modules: [q_proj, v_proj]\n", encoding="utf-8")
    model_args, data_args, _, finetuning_args, _ = A.parse_dataclasses(A.TRAIN_CLASSES, [str(recipe),
                                                                                         "--cutoff_len", "99"])
    assert (model_args.model_name_or_path, data_args.template, data_args.cutoff_len) == ("m", "qwen", 99)
    assert finetuning_args.lora_target_modules == ["q_proj", "v_proj"]
    json_file = tmp_path / "r.json"
    json_file.write_text('{"template": "vanilla", "stage": "sft"}', encoding="utf-8")
    assert A.parse_dataclasses(A.TRAIN_CLASSES, [str(json_file)])[1].template == "vanilla"


@pytest.mark.parametrize("argv, message", [
    (["--no_such_flag", "1"], "no_such_flag"),
    (["missing.yaml"], "missing.yaml: argument file not found"),
])
def test_bad_arguments_are_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        A.parse_dataclasses(A.TRAIN_CLASSES, argv)


def test_bitsandbytes_kernels_warning_is_dropped_and_others_kept():
    import instructkgc.utils  # noqa: F401  (installs the filter)

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    bnb.addHandler(handler)
    try:
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "No module named 'kernels'")
        bnb.warning("something else")
    finally:
        bnb.removeHandler(handler)
    assert seen == ["something else"]
