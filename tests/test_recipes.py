"""Recipes: configs/launch.bash + one YAML per model; the documented ft_scripts/ and infer_scripts/ wrappers."""
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from instructkgc.args import INFER_CLASSES, TRAIN_CLASSES, parse_dataclasses

REPO = Path(__file__).resolve().parents[1]
FT = sorted((REPO / "ft_scripts").glob("*.bash"))
INFER = sorted((REPO / "infer_scripts").glob("*.bash"))
REMOTE_CODE = {"baichuan", "chatglm", "moss"}
LAUNCHER_ENV = {"MODEL_PATH", "OUTPUT_DIR", "TRAIN_FILE", "VALID_FILE", "LORA_PATH", "BITS", "DEEPSPEED", "NGPU",
                "MASTER_PORT", "MODEL", "CHECKPOINT", "INPUT", "OUTPUT", "BATCH_SIZE", "PYTHON", "CUDA_VISIBLE_DEVICES"}


def launch(script, *args, env=None, path=None):
    """Dry-run a wrapper; returns the command it would run, as a list."""
    full = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    full.update(PATH=path or os.environ["PATH"], DRY_RUN="1", **(env or {}))
    res = subprocess.run(["bash", str(script), *args], cwd=REPO, env=full, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return shlex.split(res.stdout)


def test_every_wrapper_runs_its_recipe_with_env_overrides_and_extra_flags():
    assert len(FT) == 8 and len(INFER) == 7
    for script in FT:
        cmd = launch(script, "--num_train_epochs", "1",
                     env={"MODEL_PATH": "/m", "OUTPUT_DIR": "/o", "TRAIN_FILE": "/t.json", "MASTER_PORT": "2000"})
        assert cmd[:3] == ["torchrun", "--nproc_per_node=1", "--master_port=2000"]
        assert cmd[3] == str(REPO / "src" / "finetune.py") and Path(cmd[4]).parent.name == "finetune"
        assert cmd[5:] == ["--model_name_or_path", "/m", "--output_dir", "/o", "--train_file", "/t.json",
                           "--num_train_epochs", "1"]
    for script in INFER:
        cmd = launch(script, "--constrained_decoding", env={"MODEL": "/m", "INPUT": "/i", "OUTPUT": "/o",
                                                             "BITS": "16", "PYTHON": "python3"})
        assert cmd[:3] == ["env", "CUDA_VISIBLE_DEVICES=0", "python3"]
        assert cmd[3] == str(REPO / "src" / "inference.py") and Path(cmd[4]).name == script.name[6:-5] + ".yaml"
        assert cmd[5:] == ["--model_name_or_path", "/m", "--input_file", "/i", "--output_file", "/o", "--bits", "16",
                           "--constrained_decoding"]


def test_empty_deepspeed_disables_the_recipes_zero3():
    cmd = launch(REPO / "ft_scripts" / "fine_continue_full.bash", env={"DEEPSPEED": ""})
    assert cmd[-2:] == ["--deepspeed", ""]
    _, _, training_args, _, _ = parse_dataclasses(TRAIN_CLASSES, [cmd[4], *cmd[5:]])
    assert not training_args.deepspeed


@pytest.fixture()
def bin_dir(tmp_path):
    """A PATH with only what the launcher needs (so a real nvidia-smi on the machine is not seen)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("bash", "dirname", "basename", "grep"):
        (folder / tool).symlink_to(shutil.which(tool))
    return folder


def fake_nvidia_smi(folder, output, status=0):
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '%s' '{output}'\nexit {status}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def nproc(bin_dir, **env):
    cmd = launch(REPO / "ft_scripts" / "fine_llama.bash", env=env, path=str(bin_dir))
    return int(cmd[1].split("=")[1])


def test_ngpu_counting(bin_dir):
    assert nproc(bin_dir) == 1  # no nvidia-smi: one process, no failure under set -euo pipefail
    fake_nvidia_smi(bin_dir, "", status=9)
    assert nproc(bin_dir) == 1  # nvidia-smi fails (no driver)
    fake_nvidia_smi(bin_dir, "GPU 0: NVIDIA A100 (UUID: GPU-a)\n  MIG 3g.40gb Device 0: (UUID: MIG-b)\n"
                             "  MIG 3g.40gb Device 1: (UUID: MIG-c)\nGPU 1: NVIDIA A100 (UUID: GPU-d)\n")
    assert nproc(bin_dir) == 2  # MIG lines are not GPUs
    assert nproc(bin_dir, CUDA_VISIBLE_DEVICES="1") == 1
    assert nproc(bin_dir, CUDA_VISIBLE_DEVICES="0,1,2") == 3
    assert nproc(bin_dir, CUDA_VISIBLE_DEVICES="0,-1,2") == 1  # CUDA ignores entries after an invalid one
    assert nproc(bin_dir, CUDA_VISIBLE_DEVICES="") == 1
    assert nproc(bin_dir, NGPU="4") == 4


def test_unknown_recipe_exits_2():
    res = subprocess.run(["bash", "configs/launch.bash", "configs/nope.yaml"], cwd=REPO, capture_output=True,
                         text=True)
    assert res.returncode == 2 and res.stderr.startswith("error:")


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*/*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_parses_into_the_arguments(recipe, tmp_path):
    values = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    classes = TRAIN_CLASSES if recipe.parent.name == "finetune" else INFER_CLASSES
    parsed = parse_dataclasses(classes, [str(recipe), "--deepspeed", "", "--output_dir", str(tmp_path)])
    model_args, data_args = parsed[:2]
    assert model_args.model_name_or_path == values["model_name_or_path"]
    assert data_args.template == values["template"] and data_args.cutoff_len == values["cutoff_len"]
    assert model_args.bits == values.get("bits", 16)
    name = recipe.stem
    assert (values.get("trust_remote_code") is True) == (name in REMOTE_CODE)
