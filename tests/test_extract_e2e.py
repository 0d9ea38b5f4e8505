"""instructkgc extract end to end: the real HF engine on the tiny random model, constrained decoding on."""
import json
import pytest

from instructkgc.cli import main

pytest.importorskip("xgrammar")


def test_extract_cli_with_tiny_model(tmp_path, tiny_model_dir, capsys):
    src = tmp_path / "docs.txt"
    long_doc = " ".join(f"Sentence {i} tells how Barack Obama visited Hawaii with Google staff." for i in range(10))
    src.write_text("Barack Obama was born in Hawaii.\n" + long_doc + "\n", encoding="utf-8")
    out = tmp_path / "kg.jsonl"
    argv = ["extract", "--task", "NER",
           "--schema", '["person", "location", "organization"]', "--input", str(src), "--output", str(out),
           "--model_name_or_path", tiny_model_dir, "--cutoff_len", "224", "--max_new_tokens", "16",
           "--batch_size", "8", "--keep_ungrounded"]
    assert main(argv) == 0
    stderr = capsys.readouterr().err
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [x["id"] for x in lines] == ["1", "2"]
    assert lines[0]["stats"]["windows"] == 1 and lines[1]["stats"]["windows"] > 1
    # constrained decoding: every answer of the random model is valid JSON of the schema's shape
    assert all(x["stats"]["parse_failures"] == 0 for x in lines)
    for x in lines:
        assert x["task"] == "NER" and isinstance(x["entities"], list)
        for e in x["entities"]:
            assert e["type"] in ("person", "location", "organization")
            assert e["start"] is None or x["text"][e["start"]:e["end"]] == e["text"]
    assert "windows (per document: 1, " in stderr and "answers not parseable" in stderr
