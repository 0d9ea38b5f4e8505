"""Parquet input: ``read_records`` (every command's reader) and ``extract``'s documents read Parquet rows as the
records / documents the same data holds as JSONL; bad Parquet is one line naming the file, exit status 2."""
import json
from pathlib import Path

import pytest

from ie2instruction.io import InputError, read_records
from instructkgc.extract.command import main as extract_main
from instructkgc.extract.documents import read_documents
from instructkgc.inference import main as infer_main
from instructkgc.inference import run as infer_run
from samples import convert_sample

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
REPO = Path(__file__).resolve().parents[1]


def write_parquet(path, rows, schema=None, row_group_size=None):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)
    return path


def test_rows_are_records_in_column_order(tmp_path):
    rows = [{"id": 7, "text": "Alice met Bob.", "tags": ["a", "b"], "meta": {"source": "x", "score": 0.5},
             "ok": True, "note": None},
            {"id": 8, "text": "张三在北京。", "tags": [], "meta": {"source": "y", "score": None}, "ok": False,
             "note": "n"}]
    path = write_parquet(tmp_path / "in.parquet", rows, row_group_size=1)  # rows from two row groups
    got = list(read_records(path))
    assert got == [(1, rows[0]), (2, rows[1])]
    assert [list(r) for _, r in got] == [list(rows[0])] * 2  # fields in column order


def test_dictionary_columns_read_as_their_values(tmp_path):
    table = pa.table({"text": pa.array(["x", "y", "x"]).dictionary_encode()})
    pq.write_table(table, tmp_path / "cat.parquet")
    assert [r["text"] for _, r in read_records(tmp_path / "cat.parquet")] == ["x", "y", "x"]


def test_found_by_content_without_the_suffix(tmp_path):
    path = write_parquet(tmp_path / "records.bin", [{"instruction": "x"}])
    assert list(read_records(path)) == [(1, {"instruction": "x"})]


@pytest.mark.parametrize("column, value, shown", [
    ("when", pa.array([0], pa.timestamp("ms")), "column 'when' holds timestamp[ms] values"),
    ("blob", pa.array([b"\x00"], pa.binary()), "column 'blob' holds binary values"),
    ("meta", pa.array([{"d": 1}], pa.struct([("d", pa.date32())])), "column 'meta.d' holds date32[day] values"),
])
def test_columns_without_a_json_form_are_refused_by_name(tmp_path, column, value, shown):
    pq.write_table(pa.table({"text": ["a"], column: value}), tmp_path / "bad.parquet")
    with pytest.raises(InputError) as err:
        list(read_records(tmp_path / "bad.parquet"))
    assert str(err.value).startswith(f"{tmp_path / 'bad.parquet'}: {shown}, which have no JSON form")


def test_a_parquet_name_that_is_not_parquet(tmp_path):
    bad = tmp_path / "in.parquet"
    bad.write_text('{"instruction": "x"}\n', encoding="utf-8")
    with pytest.raises(InputError) as err:
        list(read_records(bad))
    assert str(err.value).startswith(f"{bad}: not a readable Parquet file: ")
    assert "\n" not in str(err.value)


def test_documents_from_parquet_equal_documents_from_jsonl(tmp_path):
    rows = [{"id": "d1", "text": "Barack Obama was born in Hawaii.", "source": "news"},
            {"id": "d2", "text": "北京大学的张三在上海出生。", "source": "wiki"}]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    for name in ("docs.parquet", "docs.data"):  # by name, and by content (auto)
        assert read_documents(str(write_parquet(tmp_path / name, rows))) == read_documents(str(jsonl))
    no_ids = write_parquet(tmp_path / "plain.parquet", [{"text": r["text"]} for r in rows])
    assert [d.id for d in read_documents(str(no_ids))] == ["1", "2"]  # row numbers, as line numbers for JSONL
    assert [d.id for d in read_documents(str(no_ids), "parquet")] == ["1", "2"]


def test_a_text_file_starting_like_parquet_stays_text(tmp_path):
    src = tmp_path / "docs.txt"
    src.write_text("PAR1 is a name.\nSecond document.\n", encoding="utf-8")
    assert [d.text for d in read_documents(str(src))] == ["PAR1 is a name.", "Second document."]


@pytest.mark.parametrize("rows, problem", [
    ([{"body": "no text column"}], "1: missing 'text'"),
    ([{"text": "fine"}, {"text": None}], "2: 'text' must be a string"),
])
def test_extract_refuses_bad_parquet_in_one_line(tmp_path, capsys, rows, problem):
    src = write_parquet(tmp_path / "docs.parquet", rows)
    with pytest.raises(SystemExit) as exc:
        extract_main(["--task", "NER", "--schema", '["person"]', "--input", str(src), "--output",
                      str(tmp_path / "out.jsonl"), "--model_name_or_path", str(tmp_path / "no-model")])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"{src}:{problem}"
    assert not (tmp_path / "out.jsonl").exists()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return convert_sample("NER", tmp_path_factory.mktemp("ner") / "test.json", limit=6)


def test_inference_from_parquet_writes_what_jsonl_gives(tiny_model_dir, records, tmp_path):
    rows = [json.loads(line) for line in records.read_text(encoding="utf-8").splitlines()]
    table = write_parquet(tmp_path / "test.parquet", rows)
    argv = ["--model_name_or_path", str(tiny_model_dir), "--template", "llama2", "--max_new_tokens", "8",
            "--batch_size", "4"]
    infer_run([*argv, "--input_file", str(records), "--output_file", str(tmp_path / "from_jsonl.json")])
    counts = infer_run([*argv, "--input_file", str(table), "--output_file", str(tmp_path / "from_parquet.json")])
    assert counts.records == 6
    assert (tmp_path / "from_parquet.json").read_bytes() == (tmp_path / "from_jsonl.json").read_bytes()


def test_inference_refuses_a_record_without_instruction_in_one_line(tiny_model_dir, tmp_path, capsys):
    table = write_parquet(tmp_path / "test.parquet", [{"instruction": "x"}, {"instruction": None}])
    with pytest.raises(SystemExit) as exc:
        infer_main(["--model_name_or_path", str(tiny_model_dir), "--template", "llama2", "--input_file",
                    str(table), "--output_file", str(tmp_path / "out.json")])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"{table}:2: record has no 'instruction' string"
    assert not (tmp_path / "out.json").exists()
