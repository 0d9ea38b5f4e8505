"""P-Tuning v2: training steers a frozen tiny model, checkpoints reload, the seed README commands run."""
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from instructkgc.ptuning import infer as pt_infer  # noqa: E402
from instructkgc.ptuning import train as pt_train  # noqa: E402
from instructkgc.ptuning.prefix import ENCODER_FILE, PrefixGenerator, load_prefix  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEED_README = REPO.parent / "shared" / "seed" / "InstructKGC_README_CN.md"

EXAMPLES = [
    ("John lives in Paris.", {"person": ["John"], "location": ["Paris"]}),
    ("Mary works at Google.", {"person": ["Mary"], "organization": ["Google"]}),
    ("Obama visited Hawaii.", {"person": ["Obama"], "location": ["Hawaii"]}),
    ("Smith joined Apple.", {"person": ["Smith"], "organization": ["Apple"]}),
]
# Prefixes alone fit the four answers exactly with these settings (loss ~18 -> < 0.001, 4/4 for tiny-model
# seeds 0-5; 150 epochs leave the loss near 0.1 and some seeds at 2/4).
FIT = ["--num_train_epochs", "300", "--train_batch_size", "4", "--max_len", "160", "--max_src_len", "128",
       "--pre_seq_len", "16", "--learning_rate", "0.1", "--log_steps", "50"]


def _records():
    out = []
    for i, (text, answer) in enumerate(EXAMPLES):
        instruction = json.dumps({"instruction": "Extract entities.", "schema": list(answer), "input": text},
                                 ensure_ascii=False)
        labels = [{"entity": e, "entity_type": t} for t, ents in answer.items() for e in ents]
        out.append({"id": str(i), "task": "NER", "source": "toy", "instruction": instruction,
                    "output": json.dumps(answer, ensure_ascii=False), "label": json.dumps(labels)})
    return out


def _state_hash(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pt_data") / "train.json"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _records()), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_seed, tmp_path_factory):
    """A tiny model (4 layers, width 128) with its output head scaled x20.

    A random-init head (std 0.02) cannot make any token much likelier than the others, so no input-side change,
    prefixes included, can lower the loss far; a sharper head stands in for a trained model. Prefixes steer a
    model only through its attention layers: with the 2-layer, width-64 test model they fit 3 of the 4 answers.
    """
    from transformers import AutoModelForCausalLM

    from instructkgc.tiny_model import build_tiny_model

    tiny_model_dir = build_tiny_model(tmp_path_factory.mktemp("pt_base"), hidden_size=128, num_layers=4,
                                      seed=tiny_seed)
    out = tmp_path_factory.mktemp("pt_sharp")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    model.save_pretrained(out)
    for name in os.listdir(tiny_model_dir):
        if name.startswith("tokenizer") or name == "special_tokens_map.json":
            shutil.copy(Path(tiny_model_dir) / name, out / name)
    return str(out)


@pytest.fixture(scope="module")
def trained(sharp_model_dir, data_file, tmp_path_factory):
    """Prefixes trained without projection: (model, output_dir, base hash before training)."""
    from transformers import AutoModelForCausalLM

    before = _state_hash(AutoModelForCausalLM.from_pretrained(sharp_model_dir))
    out = tmp_path_factory.mktemp("pt_out")
    args = pt_train.parse_args(["--train_path", data_file, "--model_dir", sharp_model_dir, "--output_dir", str(out),
                                "--prefix_projection", "false", *FIT])
    assert args.prefix_projection is False
    model = pt_train.train(args)
    return model, out, before


def _predict(model_dir, base_dir, test_path, output, *extra):
    pt_infer.run(pt_infer.parse_args(["--test_path", test_path, "--device", "cpu", "--ori_model_dir", base_dir,
                                      "--model_dir", str(model_dir), "--output_file", str(output), *extra]))
    return [json.loads(line) for line in Path(output).read_text(encoding="utf-8").splitlines()]


def test_training_fits_answers_and_keeps_base_weights(trained, sharp_model_dir, data_file, tmp_path):
    model, out, before = trained
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < 0.2 * losses[0], losses
    assert _state_hash(model.get_base_model()) == before
    last = out / "global_step-300"
    config = json.loads((last / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["prefix_projection"] is False
    assert config["num_virtual_tokens"] == 16
    assert (last / "adapter_model.safetensors").stat().st_size < 100_000  # prefixes only, no base weights
    rows = _predict(last, sharp_model_dir, data_file, tmp_path / "pred.json")
    gold = _records()
    assert [r["id"] for r in rows] == [g["id"] for g in gold]
    assert all({k: v for k, v in r.items() if k != "output"} == {k: v for k, v in g.items() if k != "output"}
               for r, g in zip(rows, gold))
    exact = sum(r["output"] == g["output"] for r, g in zip(rows, gold)) / len(gold)
    assert exact >= 0.8, [r["output"] for r in rows]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_projection_save_load_and_continue(arch, request, data_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from instructkgc.run_args import read_args

    sharp_model_dir = request.getfixturevalue("sharp_model_dir" if arch == "llama" else "tiny_qwen_dir")

    from instructkgc.infer.engine import SamplingSettings
    from instructkgc.infer.hf_engine import HFEngine
    from instructkgc.template import build_prompt_ids, get_template_and_fix_tokenizer, stop_token_ids

    args = pt_train.parse_args(["--train_path", data_file, "--model_dir", sharp_model_dir, "--output_dir",
                                str(tmp_path / "a"), "--prefix_projection", "true", "--num_train_epochs", "2",
                                "--train_batch_size", "2", "--max_len", "160", "--max_src_len", "128",
                                "--pre_seq_len", "8", "--prefix_hidden_size", "32", "--learning_rate", "0.05"])
    assert args.prefix_projection is True
    model = pt_train.train(args)
    ckpt = tmp_path / "a" / "global_step-4"
    assert json.loads((ckpt / "adapter_config.json").read_text())["prefix_projection"] is True

    tokenizer = AutoTokenizer.from_pretrained(sharp_model_dir)
    template = get_template_and_fix_tokenizer(read_args(ckpt)["template"], tokenizer)
    prompts = [build_prompt_ids(template, tokenizer, r, 128)[0] for r in _records()]

    def answers(peft_model):
        engine = HFEngine(PrefixGenerator(peft_model), tokenizer, stop_token_ids(template, tokenizer),
                          SamplingSettings(max_new_tokens=12), batch_size=3)
        return [g.text for g in engine.generate(prompts)]

    live = answers(model)
    base = AutoModelForCausalLM.from_pretrained(sharp_model_dir)
    with torch.no_grad():
        plain = base.generate(input_ids=torch.tensor([prompts[0]]), max_new_tokens=12, do_sample=False)
    assert live == answers(load_prefix(AutoModelForCausalLM.from_pretrained(sharp_model_dir), ckpt))
    assert live == answers(load_prefix(AutoModelForCausalLM.from_pretrained(sharp_model_dir), ckpt))
    assert live[0] != tokenizer.decode(plain[0, len(prompts[0]):], skip_special_tokens=True)  # prefixes act

    # Continued training starts from the saved encoder, MLP included.
    from safetensors.torch import load_file

    resumed = load_prefix(AutoModelForCausalLM.from_pretrained(sharp_model_dir), ckpt, is_trainable=True)
    state = resumed.prompt_encoder[resumed.active_adapter].state_dict()
    saved = load_file(str(ckpt / ENCODER_FILE))
    assert any(k.startswith("transform.") for k in saved)
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    more = pt_train.parse_args(["--train_path", data_file, "--model_dir", sharp_model_dir, "--output_dir",
                                str(tmp_path / "b"), "--checkpoint_dir", str(ckpt), "--num_train_epochs", "1",
                                "--train_batch_size", "4", "--max_len", "160", "--max_src_len", "128"])
    pt_train.train(more)
    assert (tmp_path / "b" / "global_step-1" / ENCODER_FILE).is_file()


def _main_exit(main, argv, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return exc.value.code, err


def test_checkpoint_base_mismatch_is_one_line(trained, data_file, tiny_qwen_dir, sharp_model_dir, tmp_path,
                                              capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    _, out, _ = trained
    ckpt = str(out / "global_step-300")
    argv = ["--test_path", data_file, "--ori_model_dir", tiny_qwen_dir, "--model_dir", ckpt,
            "--output_file", str(tmp_path / "x.json")]
    code, err = _main_exit(pt_infer.main, argv, capsys)
    assert code == 2 and len(err) == 1 and "does not match" in err[0] and "qwen2" in err[0]
    # Same architecture, one layer more.
    config = AutoConfig.from_pretrained(sharp_model_dir)
    config.num_hidden_layers = 5
    deeper = tmp_path / "deeper"
    AutoModelForCausalLM.from_config(config).save_pretrained(deeper)
    for name in os.listdir(sharp_model_dir):
        if name.startswith("tokenizer"):
            shutil.copy(Path(sharp_model_dir) / name, deeper / name)
    argv[3] = str(deeper)
    code, err = _main_exit(pt_infer.main, argv, capsys)
    assert code == 2 and len(err) == 1 and "num_layers 4 vs 5" in err[0]
    code, err = _main_exit(pt_train.main, ["--train_path", data_file, "--model_dir", str(deeper), "--checkpoint_dir",
                                           ckpt, "--output_dir", str(tmp_path / "c")], capsys)
    assert code == 2 and len(err) == 1 and "num_layers" in err[0]
    assert not (tmp_path / "x.json").exists()


def test_resume_bad_input_and_constrained(trained, sharp_model_dir, data_file, tmp_path, capsys):
    _, out, _ = trained
    ckpt = out / "global_step-300"
    full = _predict(ckpt, sharp_model_dir, data_file, tmp_path / "full.json", "--batch_size", "3")
    part = tmp_path / "part.json"
    lines = (tmp_path / "full.json").read_text(encoding="utf-8").splitlines(keepends=True)
    part.write_text(lines[0] + lines[1] + lines[2][:25], encoding="utf-8")  # interrupted mid-record
    assert _predict(ckpt, sharp_model_dir, data_file, part, "--resume", "true") == full

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_records()[0]) + "\n{not json\n", encoding="utf-8")
    code, err = _main_exit(pt_infer.main, ["--test_path", str(bad), "--ori_model_dir", sharp_model_dir,
                                           "--model_dir", str(ckpt), "--output_file", str(tmp_path / "o.json")],
                           capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"{bad}:2:")
    assert not (tmp_path / "o.json").exists()
    code, err = _main_exit(pt_train.main, ["--train_path", str(bad), "--model_dir", sharp_model_dir,
                                           "--output_dir", str(tmp_path / "t")], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"{bad}:2:")
    assert not (tmp_path / "t").exists()

    pytest.importorskip("xgrammar")
    rows = _predict(ckpt, sharp_model_dir, data_file, tmp_path / "c.json", "--constrained_decoding", "true",
                    "--max_new_tokens", "40")
    for row, rec in zip(rows, _records()):
        answer = json.loads(row["output"])
        assert list(answer) == json.loads(rec["instruction"])["schema"]


def _readme_command(section: str) -> list[str]:
    text = SEED_README.read_text(encoding="utf-8")
    body = text[text.index(section):]
    block = re.search(r"```bash\n(.*?)```", body, re.S).group(1)
    return shlex.split(block.replace("\\\n", " "))


@pytest.mark.skipif(not SEED_README.is_file(), reason=f"seed README not found at {SEED_README}")
def test_seed_readme_commands(tiny_model_dir, data_file, tmp_path):
    """Sections 5.1 and 6.2 of the seed README, with only the paths changed; eval_func scores the output."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    train_cmd = _readme_command("### 5.1P-Tuning")
    assert train_cmd[:4] == ["deepspeed", "--include", "localhost:0", "src/finetuning_pt.py"]
    paths = {"data/train.json": data_file, "/model": tiny_model_dir, "output_dir_pt": str(tmp_path / "output_dir_pt")}
    train_cmd = [paths.get(a, a) for a in train_cmd]
    if shutil.which("deepspeed", path=env["PATH"]) is None:
        train_cmd = [sys.executable] + train_cmd[3:]
    done = subprocess.run(train_cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = tmp_path / "output_dir_pt" / "global_step-40"  # 20 epochs x 2 steps
    assert json.loads((ckpt / "adapter_config.json").read_text())["num_virtual_tokens"] == 16

    infer_cmd = _readme_command("### 6.2P-Tuning")
    assert infer_cmd[:3] == ["CUDA_VISIBLE_DEVICES=0", "python", "src/inference_pt.py"]
    paths = {"data/valid.json": data_file, "/model": tiny_model_dir, "/output_dir_lora/global_step-": str(ckpt)}
    infer_cmd = [sys.executable] + [paths.get(a, a) for a in infer_cmd[2:]]
    done = subprocess.run(infer_cmd, cwd=REPO, env=dict(env, CUDA_VISIBLE_DEVICES="0"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    output = ckpt / "train_output.json"
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(EXAMPLES) and all(isinstance(r["output"], str) for r in rows)
    done = subprocess.run([sys.executable, "ie2instruction/eval_func.py", "--path1", str(output), "--task", "NER"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "F1" in done.stdout + done.stderr


def test_template_default_follows_chat_template(tiny_qwen_dir, tmp_path):
    from transformers import AutoTokenizer

    from instructkgc.ptuning.common import load_base

    assert load_base(tiny_qwen_dir)[2].name == "default"  # no chat template
    chat = tmp_path / "chat"
    shutil.copytree(tiny_qwen_dir, chat)
    tokenizer = AutoTokenizer.from_pretrained(chat)
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer.save_pretrained(chat)
    assert load_base(str(chat))[2].name == "auto"
    assert load_base(str(chat), template="qwen")[2].name == "qwen"
