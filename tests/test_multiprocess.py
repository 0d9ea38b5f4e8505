"""Multi-process training on CPU: torchrun (gloo DDP, QLoRA with gradient checkpointing) and DeepSpeed ZeRO-2
finish and save a loadable adapter."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _records(path):
    rows = []
    for i, (person, place) in enumerate([("张三", "北京"), ("Alice", "Paris"), ("李四", "上海"), ("Bob", "Tokyo")]):
        instruction = json.dumps({"instruction": "抽取实体。", "schema": ["人物", "地点"], "input": f"{person}在{place}。"},
                                 ensure_ascii=False)
        rows.append({"instruction": instruction, "output": json.dumps({"人物": [person], "地点": [place]},
                                                                     ensure_ascii=False)})
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    return str(path)


def _train(launcher, model, tmp_path, *extra):
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = launcher + [f"--master_port={_port()}", "src/finetune.py", "--do_train", "--overwrite_output_dir",
                      "--model_name_or_path", model, "--template", "alpaca", "--train_file",
                      _records(tmp_path / "train.json"), "--output_dir", str(out), "--per_device_train_batch_size",
                      "2", "--max_steps", "2", "--save_strategy", "no", "--disable_tqdm", "true", *extra]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return out, result.stderr


def _assert_loadable(model, out):
    from instructkgc.args import FinetuningArguments, ModelArguments
    from instructkgc.loader import load_model_and_tokenizer

    loaded, _, _ = load_model_and_tokenizer(ModelArguments(model_name_or_path=model, checkpoint_dir=str(out)),
                                            FinetuningArguments(), False, template="alpaca")
    assert loaded is not None and (out / "adapter_model.safetensors").is_file()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2


def test_torchrun_two_processes(tiny_model_dir, tmp_path):
    """transformers 5 leaves local_rank at -1 under torchrun: DDP must still be detected, else the PeftModel
    gets find_unused_parameters=True, which with checkpointing fails ("mark a variable ready only once")."""
    pytest.importorskip("bitsandbytes")
    out, log = _train(TORCHRUN, tiny_model_dir, tmp_path, "--bits", "4", "--gradient_checkpointing",
                      "--max_train_minutes", "60")  # its per-step decision is an all-reduce over the ranks
    assert "over 2 processes: ddp_find_unused_parameters=False" in log
    _assert_loadable(tiny_model_dir, out)


def test_deepspeed_zero2_two_processes(tiny_model_dir, tmp_path):
    pytest.importorskip("deepspeed")
    config = tmp_path / "ds_cpu_zero2.json"  # CPU: fp32, no optimizer offload (the bf16 configs are for GPUs)
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": "auto",
                                  "gradient_clipping": "auto", "train_micro_batch_size_per_gpu": "auto"}))
    out, log = _train(TORCHRUN, tiny_model_dir, tmp_path, "--deepspeed", str(config))
    # without a GPU the two processes must still form one world of 2 (else both train all the data and write
    # the same output files at the same time); no --use_cpu is needed on the command line
    assert "the 2 processes train together on the CPU" in log
    assert "over 2 processes: ddp_find_unused_parameters=False" in log
    _assert_loadable(tiny_model_dir, out)
