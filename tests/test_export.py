"""export_model: the merged model answers exactly as base + adapter; files a server needs are saved."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = Path(__file__).resolve().parents[1]


def test_merged_model_equals_base_plus_adapter(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    out = tmp_path / "merged"
    res = subprocess.run([sys.executable, str(REPO / "src/export_model.py"), "--model_name_or_path",
                          tiny_model_dir, "--checkpoint_dir", str(tmp_path / "adapter"), "--template", "llama2",
                          "--finetuning_type", "lora", "--export_dir", str(out), "--output_dir", str(tmp_path)],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert list(out.glob("*.safetensors")) and (out / "tokenizer_config.json").is_file()
    assert json.loads((out / "tokenizer_config.json").read_text())["padding_side"] == "left"
    assert (out / "generation_config.json").is_file()

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                        tmp_path / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    ids = torch.tensor([tok('{"instruction": "抽取实体", "input": "张三在北京工作。"}')["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapter(ids).logits, rtol=1e-4, atol=1e-4)
        kwargs = dict(max_new_tokens=20, do_sample=False, pad_token_id=tok.eos_token_id)
        assert merged.generate(ids, **kwargs).tolist() == adapter.generate(ids, **kwargs).tolist()
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
        assert not torch.allclose(base(ids).logits, merged(ids).logits, atol=1e-3)  # the adapter did matter


def test_quantised_export_is_refused(tiny_model_dir, tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "src/export_model.py"), "--model_name_or_path",
                          tiny_model_dir, "--template", "llama2", "--bits", "4", "--export_dir", str(tmp_path / "x"),
                          "--output_dir", str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2 and "--bits 16" in res.stderr
