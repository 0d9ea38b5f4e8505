"""Data safety, one test (or a few) per class of the issue: no command destroys an input or an existing output,
runs a model folder's code unasked, or answers bad input with a traceback. In-process ``main(argv)`` where
possible; subprocesses only where a real signal must hit a real process."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval_data import perfect_records, write_jsonl
from ie2instruction import convert as convert_mod
from ie2instruction import eval_func
from ie2instruction.io import InputError, atomic_writer, check_output, read_records

REPO = Path(__file__).resolve().parents[1]


def call(main, argv, capsys, library_log=False):
    """``(exit status, stderr lines)`` of an in-process ``main(argv)``. ``library_log``: transformers may log
    (its handler bound to an earlier test's stderr fails noisily in-process): keep only our last line."""
    try:
        code = main(argv) or 0
    except SystemExit as exc:
        code = exc.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    if library_log:
        return code, err[-1:]
    assert not any("Traceback" in line for line in err)
    return code, err


def snapshot(*paths):
    return {Path(p): Path(p).read_bytes() for p in paths}


def unchanged(snap):
    return all(p.read_bytes() == data for p, data in snap.items())


@pytest.fixture
def ner(tmp_path):
    """A copy of the NER sample data: (src, schema) in tmp_path/NER."""
    folder = tmp_path / "NER"
    folder.mkdir()
    for name in ("sample.json", "schema.json"):
        shutil.copy(REPO / "data/NER" / name, folder / name)
    return folder / "sample.json", folder / "schema.json"


def convert_argv(src, tgt, schema, *extra):
    return ["--src_path", str(src), "--tgt_path", str(tgt), "--schema_path", str(schema), "--task", "NER",
            "--split", "test", *extra]


# ---- 1. an output that is an input is refused, the input untouched ------------------------------------------
def test_convert_refuses_every_spelling_of_an_input_as_output(ner, tmp_path, capsys, monkeypatch):
    src, schema = ner
    snap = snapshot(src, schema)
    os.link(src, tmp_path / "hardlink.json")
    os.symlink(src, tmp_path / "symlink.json")
    monkeypatch.chdir(tmp_path / "NER")
    for tgt, sch in [(src, schema), ("./../NER/sample.json", schema), (schema, schema),
                     (tmp_path / "hardlink.json", schema), (tmp_path / "symlink.json", schema)]:
        code, err = call(convert_mod.main, convert_argv(src, tgt, sch), capsys)
        assert code == 2 and len(err) == 1 and "same file as" in err[0], (tgt, err)
    assert unchanged(snap)


def test_eval_refuses_out_path_equal_to_path1(tmp_path, capsys):
    pred = write_jsonl(tmp_path / "pred.json", perfect_records("NER"))
    snap = snapshot(pred)
    for flag in ("--out_path", "--plot"):
        code, err = call(eval_func.main, ["--path1", str(pred), "--task", "NER", flag, str(pred)], capsys)
        assert code == 2 and len(err) == 1 and "same file as --path1" in err[0]
    assert unchanged(snap)


def _test_records(tmp_path, n=3):
    recs = [{"id": str(i), "instruction": json.dumps({"instruction": "x", "schema": ["人物"], "input": f"t{i}"}),
             "task": "NER", "source": "s", "label": "[]"} for i in range(n)]
    return write_jsonl(tmp_path / "test.json", recs)


@pytest.mark.parametrize("resume", [False, True])
def test_inference_refuses_output_equal_to_input_before_loading(tmp_path, capsys, resume):
    from instructkgc.inference import main

    inp = _test_records(tmp_path)
    snap = snapshot(inp)
    argv = ["--model_name_or_path", str(tmp_path / "no-model"), "--input_file", str(inp), "--output_file",
            str(tmp_path / "." / "test.json")] + (["--resume", "true"] if resume else [])
    code, err = call(main, argv, capsys)
    assert code == 2 and len(err) == 1 and "same file as --input_file" in err[0]
    assert unchanged(snap)


def test_extract_refuses_output_equal_to_input(tmp_path, capsys):
    from instructkgc.extract.command import main

    docs = tmp_path / "docs.txt"
    docs.write_text("Alice met Bob in Paris.\n", encoding="utf-8")
    snap = snapshot(docs)
    for fmt, out in (("jsonl", docs), ("neo4j", tmp_path)):
        if fmt == "neo4j":
            shutil.copy(docs, tmp_path / "nodes.csv")
            docs_in = tmp_path / "nodes.csv"
        else:
            docs_in = docs
        code, err = call(main, ["--task", "NER", "--schema", '["person"]', "--input", str(docs_in), "--output",
                                str(out), "--format", fmt, "--model_name_or_path", "none"], capsys)
        assert code == 2 and len(err) == 1 and "same file as --input" in err[0]
    assert unchanged(snap)


# ---- 2. a model folder's own code runs only with --trust_remote_code ----------------------------------------
@pytest.fixture
def remote_code_model(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    (folder / "config.json").write_text(json.dumps({"model_type": "evilmodel", "auto_map": {
        "AutoConfig": "conf.EvilConfig", "AutoModelForCausalLM": "conf.EvilModel"}}), encoding="utf-8")
    (folder / "conf.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import PretrainedConfig\n"
                                    "class EvilConfig(PretrainedConfig):\n    model_type = 'evilmodel'\n",
                                    encoding="utf-8")
    return folder, marker


def test_remote_code_is_off_by_default_and_the_error_names_the_flag(remote_code_model, tmp_path, capsys):
    from instructkgc.args import ModelArguments
    from instructkgc.extract.command import main as extract_main
    from instructkgc.inference import main as infer_main
    from instructkgc.loader import load_config
    from instructkgc.ptuning.infer import PtuningInferArguments
    from instructkgc.ptuning.train import PtuningTrainArguments
    from instructkgc.template import main as template_main
    from instructkgc.utils import UsageError

    folder, marker = remote_code_model
    assert not ModelArguments().trust_remote_code
    assert not PtuningInferArguments().trust_remote_code and not PtuningTrainArguments().trust_remote_code
    with pytest.raises(UsageError, match="add --trust_remote_code"):
        load_config(folder)
    inp = _test_records(tmp_path)
    code, err = call(infer_main, ["--model_name_or_path", str(folder), "--input_file", str(inp),
                                  "--output_file", str(tmp_path / "o.json")], capsys, library_log=True)
    assert code == 2 and "add --trust_remote_code" in err[0]
    docs = tmp_path / "d.txt"
    docs.write_text("Alice met Bob.\n", encoding="utf-8")
    code, err = call(extract_main, ["--task", "NER", "--schema", '["person"]', "--input", str(docs), "--output",
                                    str(tmp_path / "o.jsonl"), "--model_name_or_path", str(folder),
                                    "--no-constrained_decoding"], capsys, library_log=True)
    assert code == 2 and "add --trust_remote_code" in err[0]
    code, err = call(template_main, ["--template", "alpaca", "--tokenizer", str(folder), "--query", "q"], capsys,
                     library_log=True)
    assert code == 2 and "add --trust_remote_code" in err[-1]
    assert not marker.exists()
    load_config(folder, trust_remote_code=True)  # opted in: the folder's code runs
    assert marker.exists()


# ---- 3. existing outputs survive: --resume verifies, fresh runs are atomic, empty input wipes nothing -------
class Echo:
    """A fake engine: answers ``{}``; raises after ``fail_after`` prompts (a crash mid-run)."""

    def __init__(self, fail_after=None):
        self.fail_after = fail_after

    def generate(self, prompts, json_schemas=None, progress=None):
        from instructkgc.infer.engine import Generation

        if self.fail_after is not None:
            if self.fail_after < len(prompts):
                raise RuntimeError("model crashed")
            self.fail_after -= len(prompts)
        return [Generation("{}", 1, True) for _ in prompts]


def _predict(inp, out, resume=False, engine=None, window=2):
    from instructkgc.infer.records import check_files, predict_file

    check_files(inp, out, resume)
    return predict_file(engine or Echo(), lambda r: ([1, 2, 3], False), inp, out, resume=resume, window=window)


def test_resume_refuses_unrelated_files_untouched(tmp_path):
    inp = _test_records(tmp_path, 4)
    full = tmp_path / "full.json"
    _predict(inp, full)
    lines = full.read_text(encoding="utf-8").splitlines(keepends=True)
    other = write_jsonl(tmp_path / "other.json", [{"instruction": "else", "output": "{}"}])
    cases = {
        "json of another input": other.read_bytes(),
        "plain text": b"my notes\nabout the run\n",
        "text without newline": b"hello",
        "answers in another order": (lines[1] + lines[0]).encode(),
        "more answers than records": ("".join(lines) + lines[0]).encode(),
        "a torn line that is not an answer": (lines[0] + '{"id": "x", "instr').encode(),
        "a JSON array": json.dumps([json.loads(lines[0])]).encode() + b"\n",
    }
    for name, data in cases.items():
        out = tmp_path / "out.json"
        out.write_bytes(data)
        with pytest.raises(InputError, match="--resume"):
            _predict(inp, out, resume=True)
        assert out.read_bytes() == data, name
    out.write_text(lines[0] + lines[1][:30], encoding="utf-8")  # a real torn answer: dropped and redone
    counts = _predict(inp, out, resume=True)
    assert counts.skipped == 1 and out.read_bytes() == full.read_bytes()


def test_a_failing_fresh_run_and_an_empty_input_keep_the_old_output(tmp_path):
    inp = _test_records(tmp_path, 5)
    out = tmp_path / "out.json"
    out.write_text("precious predictions\n", encoding="utf-8")
    with pytest.raises(RuntimeError):
        _predict(inp, out, engine=Echo(fail_after=2))
    assert out.read_text(encoding="utf-8") == "precious predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "test.json"]  # no temporary file left
    empty = tmp_path / "empty.json"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(InputError, match="no records"):
        _predict(empty, out)
    bad = write_jsonl(tmp_path / "bad.json", [{"instruction": "x", "input": 5}])
    with pytest.raises(InputError, match="'input' must be a string"):
        _predict(bad, out)
    assert out.read_text(encoding="utf-8") == "precious predictions\n"


# ---- 4. problems are found before the work, as one line ----------------------------------------------------
def test_output_locations_are_checked_up_front(ner, tmp_path, capsys):
    src, schema = ner
    (tmp_path / "adir").mkdir()
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    for tgt, problem in [(tmp_path / "adir", "is a directory"), (afile / "out.json", "is a file, not a folder"),
                         (afile / "deeper" / "out.json", "is a file, not a folder"),
                         ("/dev/null", "not a regular file")]:
        code, err = call(convert_mod.main, convert_argv(src, tgt, schema), capsys)
        assert code == 2 and len(err) == 1 and problem in err[0], (tgt, err)
    assert afile.read_text(encoding="utf-8") == "x"
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        code, err = call(convert_mod.main, convert_argv(src, ro / "o.json", schema), capsys)
        assert code == 2 and "permission denied" in err[0]


def test_a_write_error_is_one_line_and_leaves_no_temporary_file(ner, tmp_path, capsys, monkeypatch):
    src, schema = ner
    out = tmp_path / "out.json"
    out.write_text("old", encoding="utf-8")

    class DiskFull:
        def write(self, s):
            raise OSError(28, "No space left on device", str(out))

    @contextlib.contextmanager
    def full_disk_writer(path, mode="w"):
        with atomic_writer(path, mode):
            yield DiskFull()

    monkeypatch.setattr(convert_mod, "atomic_writer", full_disk_writer)
    code, err = call(convert_mod.main, convert_argv(src, out, schema), capsys)
    assert code == 1 and err == [f"{out}: No space left on device"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["NER", "out.json"] and out.read_text() == "old"


def test_model_side_arguments_checked_before_loading(tmp_path, capsys):
    from instructkgc.inference import main as infer_main
    from instructkgc.train import main as train_main

    inp = _test_records(tmp_path)
    base = ["--model_name_or_path", str(tmp_path / "no-model"), "--input_file", str(inp), "--output_file",
            str(tmp_path / "o.json")]
    for extra, problem in [(["--max_new_tokens", "0"], "--max_new_tokens must be at least 1"),
                           (["--cutoff_len", "0"], "--cutoff_len must be at least 1")]:
        code, err = call(infer_main, base + extra, capsys)
        assert code == 2 and len(err) == 1 and problem in err[0]
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    empty = tmp_path / "empty.json"
    empty.write_text("", encoding="utf-8")
    train = ["--model_name_or_path", str(tmp_path / "no-model"), "--do_train", "--train_file"]
    for argv, problem in [(train + [str(inp), "--output_dir", str(afile)], "is a file, not a folder"),
                          (train + [str(empty), "--output_dir", str(tmp_path / "o")], "no records")]:
        code, err = call(train_main, argv, capsys)
        assert code == 2 and len(err) == 1 and problem in err[0], err
    assert afile.read_text(encoding="utf-8") == "x"


def test_adapter_of_another_width_is_one_line(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from instructkgc.args import FinetuningArguments, ModelArguments
    from instructkgc.loader import load_model_and_tokenizer
    from instructkgc.utils import UsageError

    adapter = tmp_path / "adapter"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.hidden_size, config.intermediate_size = 32, 64
    wider = tmp_path / "narrower"
    AutoModelForCausalLM.from_config(config).save_pretrained(wider)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(wider)
    args = ModelArguments(model_name_or_path=str(wider), checkpoint_dir=str(adapter))
    with pytest.raises(UsageError, match="another size") as err:
        load_model_and_tokenizer(args, FinetuningArguments(), is_trainable=False, template="default")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("body, problem", [
    ('{"text": "\\ud800 lone", "entity": []}\n', "lone surrogate"),
    ('{"text": "x", "entity": [{"entity": "\\udfff", "entity_type": "t"}]}\n', "lone surrogate"),
    ("[" * 100_000 + "\n", "nested too deeply"),
    ('{"text": ' + "[" * 100_000 + "\n", "nested too deeply"),
])
def test_unencodable_and_too_deep_json_is_path_line_problem(ner, tmp_path, capsys, body, problem):
    src, schema = ner
    bad = tmp_path / "bad.json"
    bad.write_text('{"text": "ok", "entity": []}\n' + body, encoding="utf-8")
    code, err = call(convert_mod.main, convert_argv(bad, tmp_path / "o.json", schema), capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"{bad}:2:") and problem in err[0]
    assert not (tmp_path / "o.json").exists()
    array = tmp_path / "bad_array.json"
    array.write_text("[" + '{"text": "ok", "entity": []},\n' + body.rstrip("\n") + "]", encoding="utf-8")
    with pytest.raises(InputError, match=problem):
        list(read_records(array))


def test_surrogates_in_other_tools(tmp_path, capsys):
    from instructkgc.extract.documents import load_schema, read_documents
    from ie2instruction.tasks import get_task

    bad = tmp_path / "docs.jsonl"
    bad.write_text('{"text": "a\\udc00b"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="lone surrogate"):
        read_documents(str(bad))
    with pytest.raises(InputError, match="lone surrogate"):
        load_schema(get_task("NER"), '["\\ud800"]')
    with pytest.raises(InputError, match="nested too deeply"):
        load_schema(get_task("NER"), "[" * 100_000)
    # a model answer holding a lone surrogate is scored (never written back raw): the result is valid UTF-8
    recs = perfect_records("NER")
    recs[0]["output"] = json.dumps({"\ud800": ["张三"]})  # a label of its own in per_label
    pred = tmp_path / "pred.json"
    pred.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    out = tmp_path / "res.json"
    code, err = call(eval_func.main, ["--path1", str(pred), "--task", "NER", "--out_path", str(out)], capsys)
    assert code == 0 and "\\ud800" in out.read_text(encoding="utf-8")


# ---- 5. signals leave no temporary file and no traceback -------------------------------------------------------
@pytest.fixture(scope="module")
def big_ner(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    line = json.dumps({"text": "张三在北京的一家公司工作，李四在上海。" * 4,
                       "entity": [{"entity": "张三", "entity_type": "人物"}]}, ensure_ascii=False) + "\n"
    (folder / "src.json").write_text(line * 300_000, encoding="utf-8")
    shutil.copy(REPO / "data/NER/schema.json", folder / "schema.json")
    return folder


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_convert_signal_removes_the_temporary_file(big_ner, tmp_path, sig):
    out = tmp_path / "out.json"
    out.write_text("old", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(REPO / "ie2instruction/convert_func.py"),
                             *convert_argv(big_ner / "src.json", out, big_ner / "schema.json", "--split", "train")],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")] and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"interrupted by {sig.name}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"] and out.read_text() == "old"


def test_extract_sigterm_removes_the_temporary_file(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from transformers import AutoTokenizer

    from instructkgc.extract import command
    from instructkgc.template import get_template_and_fix_tokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    class KilledMidway:
        calls = 0

        def generate(self, prompts, json_schemas=None):
            self.calls += 1
            if self.calls == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return ['{"person": []}'] * len(prompts)

    monkeypatch.setattr(command, "load_engine",
                        lambda args, constrained: (KilledMidway(), tok, get_template_and_fix_tokenizer("alpaca", tok)))
    docs = tmp_path / "docs.txt"
    docs.write_text("".join(f"Person {i} walked home.\n" for i in range(400)), encoding="utf-8")
    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or a handler an earlier test's library installed (Ray)
    code, err = call(command.main, ["--task", "NER", "--schema", '["person"]', "--input", str(docs), "--output",
                                    str(tmp_path / "o.jsonl"), "--model_name_or_path", "x", "--batch_size", "1",
                                    "--no-constrained_decoding"], capsys)
    assert code == 143 and err[-1].startswith("interrupted by SIGTERM")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.txt"]
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


# ---- 6. valid input accepted, file modes kept --------------------------------------------------------------------
@pytest.mark.parametrize("sep", ["\u2028", "\u0085", "\u2029"])
def test_schema_labels_with_unicode_line_separators(tmp_path, capsys, sep):
    label = f"人{sep}物"
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps([label], ensure_ascii=False) + "\n[]\n{}\n", encoding="utf-8")
    src = write_jsonl(tmp_path / "src.json", [{"text": "张三", "entity": [{"entity": "张三", "entity_type": label}]}])
    out = tmp_path / "out.json"
    code, err = call(convert_mod.main, convert_argv(src, out, schema, "--split", "train"), capsys)
    assert code == 0, err
    rec = json.loads(out.read_text(encoding="utf-8").split("\n")[0])
    assert json.loads(rec["output"]) == {label: ["张三"]}


def test_replaced_output_keeps_its_mode(tmp_path):
    out = tmp_path / "out.json"
    out.write_text("old", encoding="utf-8")
    out.chmod(0o600)
    with atomic_writer(out) as f:
        f.write("new")
    assert out.read_text() == "new" and (out.stat().st_mode & 0o777) == 0o600
    link = tmp_path / "link.json"
    link.symlink_to(out)
    with atomic_writer(link) as f:  # written through: the link stays a link
        f.write("newer")
    assert link.is_symlink() and out.read_text() == "newer"


# ---- 7. scores are never silently different ---------------------------------------------------------------------
def test_identical_texts_get_distinct_ids_and_score_separately(tmp_path, capsys):
    schema = tmp_path / "schema.json"
    schema.write_text('["人物", "地点"]\n[]\n{}\n', encoding="utf-8")
    src = write_jsonl(tmp_path / "src.json", [
        {"text": "张三去了北京", "entity": [{"entity": "张三", "entity_type": "人物"}]},
        {"text": "张三去了北京", "entity": [{"entity": "北京", "entity_type": "地点"}]},
    ])
    out = tmp_path / "test.json"
    code, err = call(convert_mod.main, convert_argv(src, out, schema), capsys)
    assert code == 0 and "1 records repeat the text" in err[-1]
    recs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len({r["id"] for r in recs}) == 2 and recs[1]["id"] == recs[0]["id"] + "-2"
    recs[0]["output"] = '{"人物": ["张三"], "地点": []}'
    recs[1]["output"] = '{"人物": [], "地点": ["北京"]}'
    pred = write_jsonl(tmp_path / "pred.json", recs)
    code, _ = call(eval_func.main, ["--path1", str(pred), "--out_path", str(tmp_path / "r.json")], capsys)
    total = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["total"]
    assert code == 0 and (total["总样本数"], total["F1"]) == (2, 100.0)
    # the same file with the original's shared ids: still scored per record, and reported
    for r in recs:
        r["id"] = r["id"].split("-")[0]
    write_jsonl(pred, recs)
    code, err = call(eval_func.main, ["--path1", str(pred), "--out_path", str(tmp_path / "r.json")], capsys)
    total = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["total"]
    assert code == 0 and (total["总样本数"], total["F1"]) == (2, 100.0)
    assert any("1 records repeat the id and text of another with a different label" in line for line in err)


def test_shared_ids_of_different_texts_are_not_merged(tmp_path, capsys):
    recs = perfect_records("NER")
    first_ids = list(dict.fromkeys(r["id"] for r in recs))
    for r in recs:
        r["id"] = "same"  # every text under one id
    pred = write_jsonl(tmp_path / "pred.json", recs)
    code, err = call(eval_func.main, ["--path1", str(pred), "--out_path", str(tmp_path / "r.json")], capsys)
    total = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["total"]
    assert code == 0 and total["总样本数"] == len(first_ids) and total["F1"] == 100.0
    assert any(f"{len(first_ids) - 1} texts share the id of another text" in line for line in err)


def test_gold_of_the_wrong_shape_and_a_contradicting_task_are_refused(tmp_path, capsys):
    recs = perfect_records("NER")
    pred = write_jsonl(tmp_path / "pred.json", recs)
    code, err = call(eval_func.main, ["--path1", str(pred), "--task", "RE"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"{pred}:1:") and "--task RE" in err[0]
    for label in ('[{"head": "a"}]', '{"entity": "a"}', '[["张三", "人物"]]', '[{"entity": 1, "entity_type": "x"}]'):
        bad = [{**r, "label": label} for r in recs]
        for r in bad:
            r.pop("task")
        write_jsonl(pred, bad)
        code, err = call(eval_func.main, ["--path1", str(pred), "--task", "NER"], capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith(f"{pred}:1: 'label'"), (label, err)
    assert not (tmp_path / "output_msg").exists()


def test_check_output_accepts_ordinary_outputs(tmp_path):
    inp = tmp_path / "in.json"
    inp.write_text("{}", encoding="utf-8")
    check_output(tmp_path / "new" / "deeper" / "out.json", "--out", {"--in": inp})
    check_output("-", "--out", {"--in": "-"})
    check_output(inp, "--out", {})  # an existing output is fine: it is replaced atomically
    for bad, problem in [("", "empty path"), (f"{tmp_path}/new/", "is a directory"),
                         (tmp_path / "in.json" / "x", "is a file, not a folder")]:
        with pytest.raises(InputError, match=problem):
            check_output(bad, "--out", {})
