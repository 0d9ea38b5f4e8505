"""What a GPU box runs, checked on the CPU: the shipped DeepSpeed configs follow --bf16/--fp16, the default
dtype is the same for both engines, and bench/gpu_check.sh's Python steps run on the tiny model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("ds_config*.json"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("precision", ["bf16", "fp16", None])
def test_deepspeed_configs_follow_the_precision_flag(config, precision, tmp_path):
    pytest.importorskip("deepspeed")
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    args.bf16, args.fp16 = precision == "bf16", precision == "fp16"  # as on a GPU (the CPU refuses fp16)
    ds = HfTrainerDeepSpeedConfig(str(config))
    ds.trainer_config_process(args)
    assert ds.mismatches == []
    assert ds.config["bf16"]["enabled"] is (precision == "bf16")
    assert ds.config["fp16"]["enabled"] is (precision == "fp16")


def test_zero2_configs_need_no_cpu_adam_build():
    """ZeRO-2 is the LoRA config: optimizer offload would JIT-build DeepSpeed's cpu_adam for nothing."""
    stage2 = [json.loads(p.read_text()) for p in CONFIGS if "stage3" not in p.name]
    assert len(stage2) == 2 and stage2[0] == stage2[1]  # ds_config_bf16.json is the documented alias
    assert all("offload_optimizer" not in c["zero_optimization"] for c in stage2)


def test_default_dtype_is_the_same_for_both_engines():
    from transformers import LlamaConfig

    from instructkgc.loader import infer_dtype

    bf16, fp32 = LlamaConfig(dtype=torch.bfloat16), LlamaConfig(dtype=torch.float32)
    assert infer_dtype(bf16, cuda=True) == torch.bfloat16  # what the vLLM engine asks for
    assert infer_dtype(fp32, cuda=True) == torch.float16
    assert infer_dtype(fp32, torch.bfloat16, cuda=True) == torch.bfloat16  # --bf16 wins
    if not torch.cuda.is_available():
        assert infer_dtype(bf16) == torch.float32


def _extras():
    import ast

    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    node = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                and getattr(n.targets[0], "id", "") == "extras")
    return ast.literal_eval(node)


def test_version_floors_cover_what_the_code_uses():
    from packaging.requirements import Requirement
    from packaging.version import Version
    from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

    reqs = {r.name: r.specifier for r in (Requirement(s) for v in _extras().values() for s in v)}
    floor = lambda name: min(Version(s.version) for s in reqs[name] if s.operator == ">=")  # noqa: E731
    assert floor("bitsandbytes") >= Version(BITSANDBYTES_MIN_VERSION)  # transformers refuses older ones
    assert floor("xgrammar") >= Version("0.1.33")  # GrammarMatcher.fork() / is_completed()
    assert "0.32.0" in reqs["vllm"] and "0.33.0" not in reqs["vllm"]  # bounded to what the contract tests check


def test_gpu_check_cpu_rehearsal(tmp_path):
    """bench/gpu_check.sh's CPU-possible steps: inference (batched == one at a time, constrained answers
    parse), QLoRA 4-bit with and without gradient checkpointing + 4-bit inference with the adapter, 16-bit LoRA."""
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("xgrammar")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHON=sys.executable, GPU_CHECK_TIMEOUT="1500")  # the 8-minute limit is for one H200
    res = subprocess.run(["bash", str(REPO / "bench/gpu_check.sh"), "--cpu", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    figures = json.loads((tmp_path / "gpu_check.json").read_text())
    assert figures["failed"] == [] and figures["batched_equals_single"] == "12/12"
    assert figures["constrained_answers_parse"] == "12/12" and 0 < figures["constrained_grammar_share"] < 1
    for step in ("infer", "qlora", "qlora_gc", "lora16"):
        assert f"PASS {step} " in res.stdout


def test_vllm_refuses_what_it_cannot_do_like_hf(tiny_model_dir, tmp_path):
    """Checked before vLLM loads anything: one line saying what to do instead."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from instructkgc.args import FinetuningArguments, ModelArguments
    from instructkgc.infer import SamplingSettings
    from instructkgc.infer.vllm_engine import check_vllm, model_source
    from instructkgc.template import get_template_and_fix_tokenizer
    from instructkgc.utils import UsageError

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = len(tok)
    plain, lora = ModelArguments(model_name_or_path=tiny_model_dir), FinetuningArguments()
    check_vllm(plain, SamplingSettings(), tok, vocab, None)  # nothing to refuse
    with pytest.raises(UsageError, match="drop --bits"):
        check_vllm(ModelArguments(model_name_or_path=tiny_model_dir, bits=4), SamplingSettings(), tok, vocab, None)
    with pytest.raises(UsageError, match="num_beams"):
        check_vllm(plain, SamplingSettings(num_beams=2), tok, vocab, None)
    adapter = tmp_path / "lora"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])) \
        .save_pretrained(adapter)
    with pytest.raises(UsageError, match="lm_head.*export_model"):
        check_vllm(plain, SamplingSettings(), tok, vocab, str(adapter))
    with pytest.raises(UsageError, match="one LoRA adapter"):
        model_source(ModelArguments(model_name_or_path=tiny_model_dir, checkpoint_dir=f"{adapter},{adapter}"), lora)
    assert model_source(ModelArguments(model_name_or_path=tiny_model_dir, checkpoint_dir=str(adapter)), lora) \
        == (tiny_model_dir, str(adapter))
    get_template_and_fix_tokenizer("qwen", tok)  # adds <|im_start|> / <|im_end|>: the HF engine would resize
    with pytest.raises(UsageError, match="adds tokens the model lacks"):
        check_vllm(plain, SamplingSettings(), tok, vocab, None)
