"""eval_func: the original's numbers on its goldens, the corrected ones where it was broken, the CLI, bad input."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ie2instruction.eval_func import main
from ie2instruction.metrics import core, f1_of, percent, prf

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
EVAL = SHARED / "conformance" / "eval"
SCRIPT = ROOT / "ie2instruction" / "eval_func.py"
needs_shared = pytest.mark.skipif(not EVAL.is_dir(), reason="../shared/conformance/eval (the original's goldens) "
                                                            "is not beside the checkout")
ORIGINAL_OK = ["NER_perfect", "NER_perturbed", "NER_labelcopy", "RE_perfect", "RE_perturbed", "RE_labelcopy",
               "EE_perfect", "EE_perturbed", "EE_labelcopy", "RE_perfect_2sources", "NER_fenced_nosource",
               "EEA_labelcopy", "KG_labelcopy", "EET_perfect", "EET_perturbed"]


def run_eval(capsys, path, *argv, out=None):
    """main() in-process; returns (exit code, saved result or None, stdout, stderr)."""
    args = ["--path1", str(path), *argv]
    if out is not None:
        args += ["--out_path", str(out)]
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    cap = capsys.readouterr()
    result = json.loads(Path(out).read_text(encoding="utf-8")) if out is not None and Path(out).exists() else None
    return code, result, cap.out, cap.err


def task_of(name: str) -> str:
    return name.split("_")[0]


@needs_shared
@pytest.mark.parametrize("name", ORIGINAL_OK)
def test_original_numbers(capsys, tmp_path, name):
    """NER/RE/EE (and the EET numbers of the patched original): the original keys, equal and in order."""
    extra = ["--sort_by", "source"] if "source" in name else []
    code, result, out, _ = run_eval(capsys, EVAL / f"{name}.json", "--task", task_of(name), *extra,
                                    out=tmp_path / "r.json")
    expected = json.loads((EVAL / "expected" / f"{name}.json").read_text(encoding="utf-8"))
    assert code == 0
    assert core(result) == expected
    assert list(result) == list(expected)
    for cat, values in expected.items():
        assert list(result[cat])[:len(values)] == list(values)  # original keys first, additions after
    assert ast.literal_eval(out.strip().splitlines()[-1]) == expected  # the printed repr


@needs_shared
def test_ee_set_mode(capsys, tmp_path):
    code, result, _, _ = run_eval(capsys, EVAL / "EE_perfect.json", "--task", "EE", "--match_mode", "set",
                                  out=tmp_path / "r.json")
    assert code == 0
    assert all(result["total"][k] == 100.0 for k in ("event_F1", "argument_F1"))


@needs_shared
@pytest.mark.parametrize("name,expected", [
    # original: event level 0 (gold trigger blanked); corrected: the label's trigger is the gold
    ("EEA_perfect", {"event_P": 100.0, "event_R": 100.0, "event_F1": 100.0, "argument_F1": 100.0}),
    ("EEA_perturbed", {"错误数": 1, "event_P": 100.0, "event_R": 88.89, "event_F1": 94.12,
                       "argument_P": 80.0, "argument_R": 66.67, "argument_F1": 72.73}),
    # original: always 0 (gold and prediction tuples had different shapes)
    ("KG_perfect", {"错误数": 0, "P": 100.0, "R": 100.0, "F1": 100.0}),
    ("KG_perturbed", {"错误数": 1, "P": 90.91, "R": 62.5, "F1": 74.07}),
    # original: crash (ValueError: Invalid task: SPO)
    ("SPO_perfect", {"错误数": 0, "P": 100.0, "R": 100.0, "F1": 100.0}),
    ("SPO_perturbed", {"错误数": 1, "P": 20.0, "R": 83.33, "F1": 32.26}),
    ("SPO_labelcopy", {"错误数": 60, "F1": 0.0}),
    ("KG_perfect_set", {"F1": 100.0}),  # the original crashed in set mode (unhashable dict)
])
def test_corrected_numbers(capsys, tmp_path, name, expected):
    argv = ["--match_mode", "set"] if name.endswith("_set") else []
    name = name.removesuffix("_set")
    code, result, _, _ = run_eval(capsys, EVAL / f"{name}.json", "--task", task_of(name), *argv,
                                  out=tmp_path / "r.json")
    assert code == 0
    assert {k: result["total"][k] for k in expected} == expected


@needs_shared
def test_default_location_task_from_records_and_script(tmp_path):
    """``python ie2instruction/eval_func.py --path1 X``: task from the records, result beside the input."""
    pred = shutil.copy(EVAL / "RE_perfect_2sources.json", tmp_path / "pred.json")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--path1", str(pred), "--sort_by", "source"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    saved = tmp_path / "output_msg" / "pred.json"
    text = saved.read_text(encoding="utf-8")
    assert text.startswith('{\n    "total": {\n        "总样本数": 6,')  # indent=4, ensure_ascii=False
    assert ast.literal_eval(proc.stdout.strip()) == core(json.loads(text))
    assert set(json.loads(text)) == {"total", "DS1", "DS2"}


def test_script_runs_from_a_plain_checkout(tmp_path):
    """No install, no site-packages, an unrelated working directory: the documented command still runs."""
    from eval_data import perfect_records, write_jsonl

    pred = write_jsonl(tmp_path / "pred.json", perfect_records("NER"))
    proc = subprocess.run([sys.executable, "-I", "-S", str(SCRIPT), "--path1", str(pred)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "output_msg" / "pred.json").read_text(encoding="utf-8"))["total"]["F1"] == 100


@needs_shared
def test_no_task_anywhere_is_a_clear_error(capsys, tmp_path):
    code, result, _, err = run_eval(capsys, EVAL / "NER_fenced_nosource.json", out=tmp_path / "r.json")
    assert code == 2 and result is None
    assert err.strip().endswith("no --task given and the record has no 'task' field to take it from")
    assert len(err.strip().splitlines()) == 1


def test_mixed_tasks_rejected(capsys, tmp_path):
    from eval_data import perfect_records, write_jsonl
    path = write_jsonl(tmp_path / "mixed.json", perfect_records("NER") + perfect_records("RE"))
    code, result, _, err = run_eval(capsys, path, out=tmp_path / "r.json")
    assert code == 2 and result is None
    assert "records name different tasks ('NER' at line 1, 'RE' here); pass --task" in err


def test_rounding_is_the_originals():
    assert percent(1, 3) == 33.33 and percent(2, 3) == 66.67 and percent(1, 0) == 0.
    assert f1_of(14.29, 44.44) == 21.63  # from the rounded P and R
    assert prf(0, 0, 5) == (0., 0., 0.)
    # compounded rounding: F1 of the rounded values differs from the unrounded F1 here
    assert prf(1, 3, 7) == (33.33, 14.29, 20.0)


@needs_shared
def test_repair_recovers_fenced_answer(capsys, tmp_path):
    code, result, _, _ = run_eval(capsys, EVAL / "NER_fenced_nosource.json", "--task", "NER", "--repair",
                                  out=tmp_path / "r.json")
    assert code == 0
    total = result["total"]
    assert (total["错误数"], total["repaired"], total["P"], total["R"]) == (0, 1, 100.0, 100.0)


def test_per_label_breakdown(capsys, tmp_path):
    from eval_data import perfect_records, write_jsonl
    recs = perfect_records("NER")
    recs[0]["output"] = json.dumps({"人物": ["张三", "错人"], "地理位置": []}, ensure_ascii=False)
    path = write_jsonl(tmp_path / "p.json", recs)
    code, result, _, _ = run_eval(capsys, path, "--task", "NER", out=tmp_path / "r.json")
    assert code == 0
    per = result["total"]["per_label"]
    assert list(per) == sorted(per)
    assert per["人物"] == {"P": 66.67, "R": 66.67, "F1": 66.67, "support": 3}
    assert per["地理位置"] == {"P": 100.0, "R": 50.0, "F1": 66.67, "support": 2}
    assert per["组织机构"]["F1"] == 100.0


def test_event_per_label_and_sources(capsys, tmp_path):
    from eval_data import perfect_records, write_jsonl
    recs = perfect_records("EE", source="A") + perfect_records("EE", source="B")
    path = write_jsonl(tmp_path / "p.json", recs)
    code, result, _, _ = run_eval(capsys, path, "--task", "EE", "--sort_by", "source", out=tmp_path / "r.json")
    assert code == 0 and list(result) == ["total", "A", "B"]
    assert result["A"]["总样本数"] == 2 and result["total"]["总样本数"] == 4
    assert result["total"]["event_per_label"]["组织关系-加盟"]["support"] == 2
    assert result["total"]["argument_per_label"]["加盟者"] == {"P": 100.0, "R": 100.0, "F1": 100.0, "support": 4}


# ---- bad input: one line PATH:LINE: problem, exit 2, nothing written ------------------------------------------
def _good(i: int = 2) -> dict:
    """A correct NER record; the default is the first line of a second text (so its label is read)."""
    from eval_data import perfect_records
    return perfect_records("NER")[i]


BAD = {
    "malformed_jsonl": (lambda: '{"id": "x", "output": "{}"\n', 1, "invalid JSON"),
    "missing_id": (lambda: {k: v for k, v in _good().items() if k != "id"}, 1, "missing 'id'"),
    "missing_output": (lambda: {k: v for k, v in _good().items() if k != "output"}, 1, "missing 'output'"),
    "output_not_string": (lambda: {**_good(), "output": {"人物": []}}, 1, "'output' must be a string, got dict"),
    "missing_label": (lambda: {k: v for k, v in _good().items() if k != "label"}, 1, "missing 'label'"),
    "missing_instruction": (lambda: {k: v for k, v in _good().items() if k != "instruction"}, 1,
                            "missing 'instruction'"),
    "label_not_json_string": (lambda: {**_good(), "label": "[{'entity': 1"}, 1, "'label' is not a JSON string"),
    "label_is_list": (lambda: {**_good(), "label": []}, 1, "'label' must be a string, got list"),
    "label_wrong_shape": (lambda: {**_good(), "label": '{"entity": 3}'}, 1, "'label'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(capsys, tmp_path, case):
    make, line, message = BAD[case]
    good = json.dumps(_good(0), ensure_ascii=False) + "\n"
    bad = make()
    bad = bad if isinstance(bad, str) else json.dumps(bad, ensure_ascii=False) + "\n"
    path = tmp_path / "pred.json"
    path.write_text(good + bad, encoding="utf-8")
    out = tmp_path / "out" / "r.json"
    code, result, _, err = run_eval(capsys, path, "--task", "NER", out=out)
    assert code == 2
    assert not out.parent.exists() or not any(out.parent.iterdir())  # nothing partial left behind
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}:{line + 1}: ")
    assert message in lines[0]


def test_missing_output_on_a_later_line_of_the_same_key(capsys, tmp_path):
    from eval_data import perfect_records, write_jsonl
    recs = perfect_records("NER")
    del recs[1]["output"]
    code, _, _, err = run_eval(capsys, write_jsonl(tmp_path / "p.json", recs), "--task", "NER",
                               out=tmp_path / "r.json")
    assert code == 2 and err.strip() == f"{tmp_path / 'p.json'}:2: missing 'output'"


def test_json_array_input(capsys, tmp_path):
    from eval_data import perfect_records
    path = tmp_path / "p.json"
    path.write_text(json.dumps(perfect_records("RE"), ensure_ascii=False, indent=2), encoding="utf-8")
    code, result, _, _ = run_eval(capsys, path, "--task", "RE", out=tmp_path / "r.json")
    assert code == 0 and result["total"]["F1"] == 100.0


def test_invalid_answer_is_counted_not_fatal(capsys, tmp_path):
    from eval_data import perfect_records, write_jsonl
    recs = perfect_records("NER")
    recs[0]["output"] = '{"人物": ["张三"'
    recs[2]["output"] = "[]"
    code, result, _, err = run_eval(capsys, write_jsonl(tmp_path / "p.json", recs), "--task", "NER",
                                    out=tmp_path / "r.json")
    assert code == 0 and result["total"]["错误数"] == 2
    assert ":1: answer is not valid JSON" in err and ":3: answer is a JSON list, expected an object" in err


def test_rouge_without_the_extra(capsys, tmp_path, monkeypatch):
    from eval_data import perfect_records, write_jsonl
    monkeypatch.setitem(sys.modules, "rouge_chinese", None)  # importing it raises ImportError
    out = tmp_path / "r.json"
    code, result, _, err = run_eval(capsys, write_jsonl(tmp_path / "p.json", perfect_records("NER")), "--task",
                                    "NER", "--metrics_list", "f1,rouge", out=out)
    assert code == 2 and result is None
    assert err.strip() == ("--metrics_list rouge needs jieba and rouge-chinese: pip install 'instructkgc[rouge]'")


def test_rouge_with_the_extra(capsys, tmp_path, monkeypatch):
    """With (stand-ins for) jieba and rouge_chinese importable, rouge-1/2/l follow the F1 keys."""
    import types
    from eval_data import perfect_records, write_jsonl

    class FakeRouge:
        def get_scores(self, hyp, ref):
            f = float(hyp == ref)
            return [{k: {"f": f, "p": f, "r": f} for k in ("rouge-1", "rouge-2", "rouge-l")}]

    monkeypatch.setitem(sys.modules, "jieba", types.SimpleNamespace(cut=lambda s: iter(s.split(" "))))
    monkeypatch.setitem(sys.modules, "rouge_chinese", types.SimpleNamespace(Rouge=FakeRouge))
    recs = perfect_records("NER")
    recs[0]["output"] = "{}"
    code, result, out, _ = run_eval(capsys, write_jsonl(tmp_path / "p.json", recs), "--task", "NER",
                                    "--metrics_list", "f1,rouge", out=tmp_path / "r.json")
    assert code == 0
    keys = list(result["total"])
    assert keys[:8] == ["总样本数", "错误数", "P", "R", "F1", "rouge-1", "rouge-2", "rouge-l"]
    # 3 instances: the first lost two of its entities (0), the empty one (100), the third (100)
    assert result["total"]["rouge-1"] == 66.67
    assert "rouge-l" in ast.literal_eval(out.strip())["total"]


def test_unknown_metric_rejected(capsys, tmp_path):
    code, _, _, err = run_eval(capsys, tmp_path / "p.json", "--task", "NER", "--metrics_list", "f1,bleu")
    assert code == 2 and "unknown metric(s) bleu" in err


def test_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    from eval_data import perfect_records, write_jsonl
    png = tmp_path / "labels.png"
    code, _, _, _ = run_eval(capsys, write_jsonl(tmp_path / "p.json", perfect_records("EE")), "--task", "EE",
                             "--plot", str(png), out=tmp_path / "r.json")
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
