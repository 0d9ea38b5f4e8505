"""Property suite: random records, schemas, model answers and output paths through convert, eval, extract's
readers and inference's file checks. Whatever comes in, a command ends with exit status 0 or 2 (one line on
stderr), never a traceback, and every input file is byte-identical afterwards."""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from eval_data import TASKS, perfect_records
from ie2instruction import convert, eval_func
from ie2instruction.io import InputError

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=10) | st.sampled_from(
    ["张三", "人物", "", "NAN", "a\u2028b", "c\u0085d", "\x00", "\\ud800", "e\rf", "g\nh"])
LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT
VALUE = st.recursive(LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3), max_leaves=12)
ENTITY = st.fixed_dictionaries({"entity": TEXT, "entity_type": TEXT}) | VALUE
RECORD = st.fixed_dictionaries({"text": TEXT | VALUE, "entity": st.lists(ENTITY, max_size=3) | VALUE}) | \
    st.dictionaries(TEXT, VALUE, max_size=3)
RAW_LINE = st.sampled_from(['{"text": "\\ud800", "entity": []}', "[" * 3000, "{", "", "null", "[1]",
                            '{"text": "x", "entity": []}', "\ufeff{}", '{"text": "\\udc00\\ud800"}'])
OUTPUT_CHOICE = st.sampled_from(["new", "src", "schema", "dotted_src", "dir", "under_file", "existing"])


def quiet_call(main, argv):
    """Exit status and stderr of an in-process ``main(argv)``; any other exception fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv) or 0
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def output_path(choice: str, root: Path, src: Path, schema: Path) -> Path | str:
    return {"new": root / "out" / "o.json", "src": src, "schema": schema, "dir": root,
            "dotted_src": f"{root}/./sub/../{src.name}", "under_file": src / "o.json",
            "existing": root / "existing.json"}[choice]


def files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def check_outcome(code, err, before, after, written):
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:  # one line; eval may have warned about answers before it
        assert all(": answer " in line or "more answer problems" in line for line in err.splitlines()[:-1]), err
    for path, data in before.items():  # inputs (and a refused output) byte-identical
        if path != written or code == 2:
            assert after.get(path) == data, path
    assert not [p for p in after if p.endswith(".tmp")]


@SETTINGS
@given(records=st.lists(RECORD, max_size=4), raw=st.lists(RAW_LINE, max_size=2),
       schema_lines=st.lists(st.lists(TEXT, max_size=3).map(json.dumps) | RAW_LINE, min_size=0, max_size=4),
       split=st.sampled_from(["train", "test"]), choice=OUTPUT_CHOICE, array=st.booleans())
def test_convert_never_tracebacks_and_never_touches_inputs(records, raw, schema_lines, split, choice, array):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "sub").mkdir()
        src, schema = root / "src.json", root / "schema.json"
        lines = [json.dumps(r, ensure_ascii=bool(len(raw) % 2)) for r in records] + raw
        src.write_text("[" + ",\n".join(lines) + "]" if array else "\n".join(lines) + "\n", encoding="utf-8",
                       errors="surrogatepass")
        schema.write_text("\n".join(schema_lines) + "\n", encoding="utf-8")
        (root / "existing.json").write_text("keep me\n", encoding="utf-8")
        out = output_path(choice, root, src, schema)
        before = files(root)
        code, err = quiet_call(convert.main, ["--src_path", str(src), "--tgt_path", str(out), "--schema_path",
                                              str(schema), "--task", "NER", "--split", split])
        check_outcome(code, err, before, files(root), str(out))
        if choice in ("src", "schema", "dotted_src", "dir", "under_file"):
            assert code == 2


ANSWER = st.one_of(VALUE.map(lambda v: json.dumps(v, ensure_ascii=False)), TEXT,
                   st.sampled_from(['{"人物": ["张三"]}', "```json\n{}\n```", "[" * 5000, '{"\\ud800": []}']))


@SETTINGS
@given(task=st.sampled_from(TASKS), answers=st.lists(ANSWER, min_size=1, max_size=6),
       edits=st.lists(st.tuples(st.integers(0, 20), st.sampled_from(["id", "label", "task", "source", "drop",
                                                                      "dup"]), VALUE), max_size=4),
       given_task=st.sampled_from([None, *TASKS]), out_choice=st.sampled_from(["new", "src", "default"]))
def test_eval_never_tracebacks_and_never_touches_its_input(task, answers, edits, given_task, out_choice):
    recs = perfect_records(task)
    for i, answer in enumerate(answers):
        recs[i % len(recs)]["output"] = answer
    for i, kind, value in edits:
        r = recs[i % len(recs)]
        if kind == "drop":
            r.pop("label", None)
        elif kind == "dup":
            recs.append(dict(r))
        else:
            r[kind] = value if not isinstance(value, str) or kind != "label" else value
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pred = root / "pred.json"
        pred.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
        argv = ["--path1", str(pred)] + (["--task", given_task] if given_task else [])
        out = {"new": root / "r.json", "src": pred, "default": None}[out_choice]
        if out is not None:
            argv += ["--out_path", str(out)]
        before = files(root)
        code, err = quiet_call(eval_func.main, argv)
        after = files(root)
        check_outcome(code, err, before, after, str(out))
        if code == 0:
            written = out or root / "output_msg" / "pred.json"
            json.loads(Path(written).read_text(encoding="utf-8"))  # valid UTF-8 JSON
        if out_choice == "src":
            assert code == 2


@SETTINGS
@given(data=st.binary(max_size=200) | st.lists(RECORD, max_size=3).map(
    lambda rs: "\n".join(json.dumps(r) for r in rs).encode()), schema=st.text(max_size=30) | RAW_LINE,
       task=st.sampled_from(TASKS), fmt=st.sampled_from(["auto", "text", "jsonl"]))
def test_extract_readers_raise_only_input_errors(data, schema, task, fmt):
    from ie2instruction.tasks import get_task
    from instructkgc.extract.documents import load_schema, read_documents

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "docs.jsonl"
        path.write_bytes(data)
        try:
            read_documents(str(path), fmt)
        except InputError as err:
            assert "\n" not in str(err)
        assert path.read_bytes() == data
    try:
        load_schema(get_task(task), schema)
    except InputError as err:
        assert "\n" not in str(err)


@SETTINGS
@given(existing=st.binary(max_size=120) | st.sampled_from([b"", b"\n", b'{"output": "{}"}\n']),
       keep=st.integers(0, 3), cut=st.integers(0, 60), resume=st.booleans())
def test_inference_file_checks_leave_a_foreign_output_untouched(existing, keep, cut, resume):
    from instructkgc.infer.records import check_files

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inp = root / "in.json"
        recs = [{"id": str(i), "instruction": f"q{i}", "input": "t"} for i in range(3)]
        inp.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
        answers = "".join(json.dumps({**r, "output": "{}"}) + "\n" for r in recs[:keep])
        nxt = json.dumps({**recs[keep], "output": "{}"})[:cut] if keep < 3 else ""
        out = root / "out.json"
        content = existing if cut % 2 else (answers + nxt).encode()
        out.write_bytes(content)
        try:
            check_files(inp, out, resume)
        except InputError as err:
            assert "\n" not in str(err) and out.read_bytes() == content
        else:
            data = out.read_bytes()
            assert content.startswith(data)
            if data != content:  # only a verified torn answer is ever cut off: the start of the next one
                torn, done = content[len(data):], data.count(b"\n")
                assert resume and json.dumps({**recs[done], "output": "{}"}).encode().startswith(torn)
        assert inp.read_text(encoding="utf-8") == "".join(json.dumps(r) + "\n" for r in recs)
    assert not os.path.exists(out)
