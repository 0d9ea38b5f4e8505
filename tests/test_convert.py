"""convert_func: conformance with the original's golden files, the CLI forms, bad input, seeded modes, fixes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ie2instruction.convert import build_parser, convert
from ie2instruction.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SCRIPT = ROOT / "ie2instruction" / "convert_func.py"
SPLIT_NUM = {"NER": 6, "RE": 4, "SPO": 4, "EE": 4, "EET": 4, "EEA": 4, "KG": 1}
TASKS = list(SPLIT_NUM)
BYTE_EQUAL = {"NER", "RE", "SPO", "EET", "KG"}  # train files that do not depend on Python's set order

needs_shared = pytest.mark.skipif(not (SHARED / "conformance").is_dir(),
                                  reason="../shared (the original's goldens) is not beside the checkout")


def run(*argv: str, cwd=ROOT, script=SCRIPT):
    return subprocess.run([sys.executable, str(script), *argv], cwd=cwd, capture_output=True, text=True)


def do_convert(tmp_path, task, split, src=None, schema=None, language="zh", name=None, **extra):
    src = src or SHARED / "data" / task / "sample.json"
    schema = schema or Path(src).parent / "schema.json"
    out = tmp_path / (name or f"{task}_{split}_{language}.json")
    argv = ["--src_path", str(src), "--tgt_path", str(out), "--schema_path", str(schema), "--task", task,
            "--split", split, "--split_num", str(extra.pop("split_num", SPLIT_NUM[task])), "--language", language]
    for k, v in extra.items():
        argv += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    convert(build_parser().parse_args(argv))
    return out


def lines(path):
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines()]


def canon_equal(a, b) -> bool:
    r = subprocess.run([sys.executable, str(SHARED / "conformance" / "canon_compare.py"), str(a), str(b)],
                       capture_output=True, text=True)
    return r.returncode == 0 and "CANON-EQUAL" in r.stdout


@needs_shared
@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("task", TASKS)
def test_matches_original_goldens(tmp_path, task, split):
    ours = do_convert(tmp_path, task, split)
    golden = SHARED / "conformance" / "convert" / f"{task}_{split}_zh.json"
    if split == "train" and task in BYTE_EQUAL:
        assert ours.read_bytes() == golden.read_bytes()
    else:
        assert canon_equal(ours, golden)


@needs_shared
@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("task", TASKS)
def test_english_differs_only_in_the_instruction_sentence(tmp_path, task, split):
    zh = do_convert(tmp_path, task, split, language="zh")
    en = do_convert(tmp_path, task, split, language="en")
    t = get_task(task)
    zh_text = zh.read_text(encoding="utf-8")
    en_text = en.read_text(encoding="utf-8")
    assert t.sentences["en"] in json.loads(en_text.splitlines()[0])["instruction"]
    assert en_text.replace(json.dumps(t.sentences["en"], ensure_ascii=False)[1:-1],
                           json.dumps(t.sentences["zh"], ensure_ascii=False)[1:-1]) == zh_text


@needs_shared
def test_test_schema_order_is_code_point_sorted(tmp_path):
    recs = lines(do_convert(tmp_path, "NER", "test", split_num=-1))
    schema = json.loads(recs[0]["instruction"])["schema"]
    assert schema == sorted(schema) and len(schema) == 3
    ee = lines(do_convert(tmp_path, "EE", "test", split_num=-1))
    for item in json.loads(ee[0]["instruction"])["schema"]:
        assert item["arguments"] == sorted(item["arguments"])


def test_cli_forms_run_from_any_directory(tmp_path):
    src = ROOT / "data" / "NER" / "sample.json"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.json").write_bytes(src.read_bytes())
    (tmp_path / "in" / "schema.json").write_bytes((ROOT / "data" / "NER" / "schema.json").read_bytes())
    args = ["--src_path", "in/s.json", "--schema_path", "in/schema.json", "--task", "NER", "--split_num", "6"]
    r1 = run(*args, "--tgt_path", "out1.json", cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr
    r2 = subprocess.run([sys.executable, "-m", "ie2instruction.convert_func", *args, "--tgt_path", "out2.json"],
                        cwd=tmp_path, capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r2.returncode == 0, r2.stderr
    assert (tmp_path / "out1.json").read_bytes() == (tmp_path / "out2.json").read_bytes()
    first = json.loads((tmp_path / "out1.json").read_text(encoding="utf-8").splitlines()[0])
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out1.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert first["source"] == "in" and first["task"] == "NER"
    exe = Path(sys.executable).parent / "convert_func"
    if exe.exists():
        r3 = subprocess.run([str(exe), *args, "--tgt_path", "out3.json"], cwd=tmp_path, capture_output=True, text=True)
        assert r3.returncode == 0, r3.stderr
        assert (tmp_path / "out3.json").read_bytes() == (tmp_path / "out1.json").read_bytes()


def test_json_array_input_equals_jsonl(tmp_path):
    src = ROOT / "data" / "RE" / "sample.json"
    recs = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines() if x.strip()]
    arr = tmp_path / "arr" / "RE"
    arr.mkdir(parents=True)
    (arr / "sample.json").write_text(json.dumps(recs, ensure_ascii=False, indent=2), encoding="utf-8")
    a = do_convert(tmp_path, "RE", "train", src=src, name="a.json")
    b = do_convert(tmp_path, "RE", "train", src=arr / "sample.json", schema=src.parent / "schema.json", name="b.json")
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("language", ["zh", "en"])
def test_project_data_converts(tmp_path, task, language):
    suffix = "" if language == "zh" else "_en"
    src = ROOT / "data" / task / f"sample{suffix}.json"
    schema = ROOT / "data" / task / f"schema{suffix}.json"
    for split in ("train", "test"):
        out = lines(do_convert(tmp_path, task, split, src=src, schema=schema, language=language))
        assert out, f"{task} {split} produced nothing"
        for rec in out:
            ins = json.loads(rec["instruction"])
            assert list(ins) == ["instruction", "schema", "input"]
            if split == "train":
                assert list(rec) == ["task", "source", "instruction", "output"]
                answer = json.loads(rec["output"])
                keys = [i if isinstance(i, str) else i.get("predicate") or i.get("event_type") or i["entity_type"]
                        for i in ins["schema"]]
                assert list(answer) == list(dict.fromkeys(keys))
            else:
                assert list(rec)[:4] == ["id", "task", "source", "instruction"]


@pytest.mark.parametrize("task", TASKS)
def test_unlabelled_test_input(tmp_path, task):
    src = tmp_path / "u" / "in.json"
    src.parent.mkdir()
    src.write_text('{"text": "Ada Lovelace met Charles Babbage in London."}\n{"id": 7, "text": "no labels"}\n',
                   encoding="utf-8")
    schema = ROOT / "data" / task / "schema_en.json"
    out = lines(do_convert(tmp_path, task, "test", src=src, schema=schema, split_num=-1))
    assert len({r["id"] for r in out}) == 2
    assert len(out) == 2 or task == "SPO"  # SPO: a predicate shared by two schema items is asked twice
    assert all("label" not in r for r in out)
    assert all(json.loads(r["instruction"])["schema"] for r in out)


def _bad(tmp_path, content: bytes, task="NER", split="train", **kw):
    src = tmp_path / "bad" / "in.json"
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(content)
    tgt = tmp_path / "out.json"
    argv = ["--src_path", str(src), "--tgt_path", str(tgt), "--task", task, "--split", split,
            "--schema_path", str(kw.pop("schema", ROOT / "data" / task / "schema.json"))]
    for k, v in kw.items():
        argv += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    return run(*argv), src, tgt


@pytest.mark.parametrize("content,where,message", [
    (b'{"text": "a", "entity": []}\n{"text": "b", "entity": [}\n', ":2:", "invalid JSON"),
    (b'{"text": "a", "entity": []}\n{"entity": []}\n', ":2:", "missing 'text'"),
    (b'{"text": "a", "entity": [{"entity": "a"}]}\n', ":1:", "entity_type"),
    (b'{"text": "a", "entity": "x"}\n', ":1:", "must be a list"),
    (b'{"text": "a"}\n', ":1:", "missing 'entity'"),
    (b'{"text": "ok", "entity": []}\n{"text": "\xff\xfe", "entity": []}\n', ":2:", "UTF-8"),
    (b'[{"text": "a", "entity": []},\n 3]\n', ":2:", "JSON object"),
])
def test_bad_input_exit_2_one_line_no_output(tmp_path, content, where, message):
    r, src, tgt = _bad(tmp_path, content)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(str(src) + where) and message in r.stderr
    assert not tgt.exists()
    assert [p.name for p in tgt.parent.iterdir() if p.name.startswith(".out")] == []


def test_bad_input_leaves_existing_target_untouched(tmp_path):
    tgt = tmp_path / "out.json"
    tgt.write_text("precious\n")
    r, _, _ = _bad(tmp_path, b'{"text": "a", "entity": []}\nnot json\n')
    assert r.returncode == 2 and tgt.read_text() == "precious\n"


def test_bad_schema_and_options(tmp_path):
    good = b'{"text": "a", "entity": []}\n'
    r, _, tgt = _bad(tmp_path, good, schema=tmp_path / "missing.json")
    assert r.returncode == 2 and "missing.json" in r.stderr and not tgt.exists()
    bad_schema = tmp_path / "schema.json"
    bad_schema.write_text('["a"]\n{"x": 1}\n{}\n')
    r, _, _ = _bad(tmp_path, good, schema=bad_schema)
    assert r.returncode == 2 and r.stderr.startswith(f"{bad_schema}:2:")
    r, _, _ = _bad(tmp_path, good, split_num=0)
    assert r.returncode == 2 and "--split_num" in r.stderr
    wrong = tmp_path / "hard.json"
    wrong.write_text(json.dumps({"not a label": ["x"]}))
    r, _, _ = _bad(tmp_path, good, cluster_mode=True, hard_negative_path=wrong)
    assert r.returncode == 2 and "wrong file for this task" in r.stderr
    r, _, _ = _bad(tmp_path, good, cluster_mode=True)
    assert r.returncode == 2 and "--hard_negative_path" in r.stderr


def _texts_schemas(path):
    out = {}
    for r in lines(path):
        ins = json.loads(r["instruction"])
        out.setdefault(ins["input"], []).extend(
            json.dumps({k: sorted(v) if isinstance(v, list) else v for k, v in s.items()} if isinstance(s, dict)
                       else s, ensure_ascii=False, sort_keys=True) for s in ins["schema"])
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.parametrize("task", ["NER", "RE", "EE", "KG"])
def test_random_modes_are_seeded(tmp_path, task):
    src, schema = ROOT / "data" / task / "sample.json", ROOT / "data" / task / "schema.json"
    a = do_convert(tmp_path, task, "train", src=src, schema=schema, name="a", random_sort=True, neg_schema=0.5)
    b = do_convert(tmp_path, task, "train", src=src, schema=schema, name="b", random_sort=True, neg_schema=0.5)
    c = do_convert(tmp_path, task, "train", src=src, schema=schema, name="c", random_sort=True, neg_schema=0.5, seed=7)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    # --random_sort alone reorders, but asks the same schema items as the sorted conversion
    s = do_convert(tmp_path, task, "train", src=src, schema=schema, name="s")
    r = do_convert(tmp_path, task, "train", src=src, schema=schema, name="r", random_sort=True)
    assert s.read_bytes() != r.read_bytes()
    assert _texts_schemas(s) == _texts_schemas(r)


@needs_shared
def test_split_num_minus_one_and_neg_schema_zero(tmp_path):
    for task in ("RE", "KG"):
        for split in ("train", "test"):
            out = lines(do_convert(tmp_path, task, split, split_num=-1))
            assert len(out) == len({r["instruction"] for r in out}) == {"RE": 6, "KG": 5}[task]
    ner = lines(do_convert(tmp_path, "NER", "train", neg_schema=0))
    assert len(ner) == 2
    assert all(json.loads(r["output"]) and all(json.loads(r["output"]).values()) for r in ner)


@pytest.mark.parametrize("task", ["NER", "RE", "SPO", "EET", "EE", "EEA", "KG"])
def test_cluster_mode_works_for_every_task(tmp_path, task):
    src, schema = ROOT / "data" / task / "sample_en.json", ROOT / "data" / task / "schema_en.json"
    hard = ROOT / "data" / task / "hard_negative_en.json"
    if not hard.exists():
        universe = get_task(task).universe(__import__("ie2instruction.tasks", fromlist=["x"]).read_schema(schema))
        hard = tmp_path / "hard.json"
        hard.write_text(json.dumps({u: universe[:1] for u in universe}, ensure_ascii=False), encoding="utf-8")
    out = lines(do_convert(tmp_path, task, "train", src=src, schema=schema, cluster_mode=True,
                           hard_negative_path=hard))
    assert out


def test_spo_never_asks_one_predicate_twice(tmp_path):
    d = tmp_path / "spo"
    d.mkdir()
    (d / "schema.json").write_text(json.dumps(["person_located in_city", "organization_located in_city",
                                               "person_born in_city"]) + "\n[]\n{}\n")
    (d / "in.json").write_text(json.dumps({"text": "Acme is located in Paris; Bo is located in Rome.", "relation": [
        {"head": "Acme", "head_type": "organization", "relation": "located in", "tail": "Paris", "tail_type": "city"},
        {"head": "Bo", "head_type": "person", "relation": "located in", "tail": "Rome", "tail_type": "city"}]}) + "\n")
    out = lines(do_convert(tmp_path, "SPO", "train", src=d / "in.json", schema=d / "schema.json", split_num=-1))
    answers = {}
    for r in out:
        preds = [s["predicate"] for s in json.loads(r["instruction"])["schema"]]
        assert len(preds) == len(set(preds))
        for s in json.loads(r["instruction"])["schema"]:
            answers[s["subject_type"]] = json.loads(r["output"])[s["predicate"]] if s["predicate"] == "located in" \
                else answers.get(s["subject_type"])
    assert answers["organization"] == [{"subject": "Acme", "object": "Paris"}]
    assert answers["person"] == [{"subject": "Bo", "object": "Rome"}]


def test_eea_lists_every_trigger(tmp_path):
    d = tmp_path / "eea"
    d.mkdir()
    (d / "schema.json").write_text('[]\n[]\n{"attack": ["attacker", "target"]}\n')
    events = [{"event_type": "attack", "event_trigger": t, "arguments": [{"argument": "A", "role": "attacker"}]}
              for t in ("hit", "struck", "shot")]
    (d / "in.json").write_text(json.dumps({"text": "A hit B, struck C and shot D.", "event": events}) + "\n")
    (rec,) = lines(do_convert(tmp_path, "EEA", "train", src=d / "in.json", schema=d / "schema.json"))
    assert json.loads(rec["instruction"])["schema"][0]["trigger"] == ["hit", "struck", "shot"]
    assert [e["trigger"] for e in json.loads(rec["output"])["attack"]] == ["hit", "struck", "shot"]


def test_kg_uses_every_entity_type(tmp_path):
    d = tmp_path / "kg"
    d.mkdir()
    (d / "schema.json").write_text(json.dumps([]) + "\n" + json.dumps(["born in", "spouse", "founded", "ceo"])
                                   + "\n" + json.dumps({"person": ["born in", "spouse"],
                                                        "company": ["founded", "ceo"]}) + "\n")
    rel = [{"head": "Ann", "relation": "born in", "tail": "Oslo"},
           {"head": "Acme", "relation": "founded", "tail": "1999"}, {"head": "Acme", "relation": "ceo", "tail": "Ann"}]
    (d / "in.json").write_text(json.dumps({"text": "Ann, born in Oslo, is CEO of Acme, founded 1999.",
                                           "relation": rel}) + "\n")
    out = lines(do_convert(tmp_path, "KG", "train", src=d / "in.json", schema=d / "schema.json"))
    answers = {k: v for r in out for k, v in json.loads(r["output"]).items()}
    assert answers == {"person": {"Ann": {"born in": "Oslo"}}, "company": {"Acme": {"ceo": "Ann", "founded": "1999"}}}
