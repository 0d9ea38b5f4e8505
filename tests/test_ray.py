"""``--ray``: local Ray (2 CPUs, one session for the module), the tiny model, workers with one torch thread.

The Ray path must write exactly what one process writes (inference, and extraction for every result shape),
resume after a killed run without losing or repeating an item, retry a crashed worker and name what a
persistent crash lost. Marked ``ray`` (``-m "not ray"`` skips them); ``make test`` runs them.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instructkgc import distributed
from instructkgc.cli import main as cli_main
from instructkgc.inference import main as infer_main
from instructkgc.inference import run as infer_run
from samples import convert_sample

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the crashing job below
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return convert_sample("NER", tmp_path_factory.mktemp("ner") / "test.json")


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, records, tmp_path_factory):
    """The single-process answers and counts: what every --ray run must reproduce."""
    out = tmp_path_factory.mktemp("one") / "one.json"
    counts = infer_run(infer_argv(tiny_model_dir, records, out))
    return out.read_bytes(), counts


def infer_argv(model, records, out, *extra):
    return ["--model_name_or_path", str(model), "--template", "llama2", "--input_file", str(records),
            "--output_file", str(out), "--max_new_tokens", "8", "--batch_size", "4", *extra]


def test_inference_on_two_workers_writes_what_one_process_writes(tiny_model_dir, records, one_process, tmp_path):
    out = tmp_path / "ray.json"
    counts = infer_run(infer_argv(tiny_model_dir, records, out, "--ray", "--num_workers", "2"))
    assert out.read_bytes() == one_process[0]
    assert counts.as_dict() == one_process[1].as_dict()  # records, generated, cut off, invalid JSON, tokens
    assert not Path(f"{out}.parts").exists()  # shards removed once the final file is there


DOCS = ["Barack Obama was born in Hawaii and worked for Google in California.",
        " ".join(f"Sentence {i} says Alice met Bob in Paris at the Louvre." for i in range(8)),
        "北京大学的张三在上海出生。"]
SCHEMAS = {"NER": '["person", "location", "organization"]', "RE": '["born in", "work for"]',
           "EET": '["meeting", "birth"]', "KG": '{"person": ["birthplace", "employer"]}'}


@pytest.mark.parametrize("task", list(SCHEMAS))  # entities, relations, events, records
def test_extract_on_ray_writes_what_one_process_writes(task, tiny_model_dir, tmp_path):
    src = tmp_path / "docs.txt"
    src.write_text("\n".join(DOCS) + "\n", encoding="utf-8")

    def extract(out, *extra):
        argv = ["extract", "--task", task, "--schema", SCHEMAS[task], "--input", str(src), "--output", str(out),
                "--model_name_or_path", str(tiny_model_dir), "--cutoff_len", "300" if task == "KG" else "200",
                "--max_new_tokens", "24",
                "--batch_size", "4", "--keep_ungrounded", "--no-grounded_decoding", *extra]  # a random model
        # limited to spans of the text mostly answers empty lists: free strings give items to compare
        assert cli_main(argv) == 0

    extract(tmp_path / "one.jsonl")
    extract(tmp_path / "ray.jsonl", "--ray", "--num_workers", "1" if task != "NER" else "2")
    one = (tmp_path / "one.jsonl").read_text(encoding="utf-8")
    assert (tmp_path / "ray.jsonl").read_text(encoding="utf-8") == one
    results = [json.loads(line) for line in one.splitlines()]
    assert [r["id"] for r in results] == ["1", "2", "3"] and results[1]["stats"]["windows"] > 1
    if task != "KG":  # the random model fills no KG record; those (empty) results are still compared
        assert any(r[distributed_field(task)] for r in results)  # something found: the shapes are compared


def distributed_field(task):
    from ie2instruction.tasks import get_task

    return get_task(task).result_field


def test_resume_after_a_killed_run_loses_and_repeats_nothing(tiny_model_dir, records, tmp_path, ray_session):
    # the sample 10 times over (240 records): long enough that the kill lands mid-run (24 records can all be
    # answered between two looks at the parts)
    many = tmp_path / "many.json"
    rows = [json.loads(line) for line in records.read_text(encoding="utf-8").splitlines()]
    many.write_text("".join(json.dumps({**row, "id": f"{k}-{row['id']}"}) + "\n" for k in range(10) for row in rows),
                    encoding="utf-8")
    infer_run(infer_argv(tiny_model_dir, many, tmp_path / "one.json"))
    out = tmp_path / "ray.json"
    argv = infer_argv(tiny_model_dir, many, out, "--ray", ray_session, "--num_workers", "1")
    proc = subprocess.Popen([sys.executable, str(REPO / "src/inference.py"), *argv], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = Path(f"{out}.parts")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        lines = sum(p.read_bytes().count(b"\n") for p in parts.glob("part-*.jsonl")) if parts.is_dir() else 0
        if lines >= 4:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    (part,) = parts.glob("part-*.jsonl")
    with open(part, "a", encoding="utf-8") as f:  # a torn last line, as a kill in mid-write leaves
        f.write('7\t{}\t{"id": "torn", "instru')
    done = sum(1 for _ in part.read_text(encoding="utf-8").splitlines()) - 1
    counts = infer_run(argv)
    assert counts.skipped == done and counts.generated == counts.records - done
    assert out.read_bytes() == (tmp_path / "one.json").read_bytes()  # each record once, in input order


class CrashingJob(distributed.InferJob):
    """Kills its worker process on the block holding record line ``once`` the first time (a marker file
    remembers) and on the block holding line ``always`` every time."""

    once: int = 0
    always: int = 0
    marker: str = ""

    def process(self, state, items):
        lines = {item["line"] for item in items}
        if self.once in lines and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        if self.always in lines:
            os._exit(1)
        return super().process(state, items)


def test_a_crashed_worker_is_retried_and_a_persistent_crash_is_named(tiny_model_dir, records, one_process,
                                                                     tmp_path):
    from instructkgc.args import parse_infer_args

    out = tmp_path / "out.json"
    model_args, data_args, _, finetuning_args, generating_args, infer_args = parse_infer_args(
        infer_argv(tiny_model_dir, records, out, "--ray", "--num_workers", "2"))
    job = CrashingJob(model_args, data_args, finetuning_args, generating_args, infer_args)
    job.once, job.always, job.marker = 3, 20, str(tmp_path / "crashed")
    items = distributed.inference_items(infer_args)
    write = lambda lines: out.write_text("".join(lines), encoding="utf-8")  # noqa: E731
    with pytest.raises(distributed.LostItems) as lost:
        distributed.run(job, items, infer_args, str(out), write)
    assert (tmp_path / "crashed").exists() and f"{records}:3" not in lost.value.ids  # retried: done
    assert f"{records}:20" in lost.value.ids and len(lost.value.ids) < 24  # named; the others written
    assert f"{records}:20" in str(lost.value) and not out.exists()
    job.always = -1  # the fault is gone: the same run again does only what was lost
    assert distributed.run(job, items, infer_args, str(out), write)[1] == 24 - len(lost.value.ids)
    assert out.read_bytes() == one_process[0]


def test_missing_ray_names_the_extra(tiny_model_dir, records, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(SystemExit) as exc:
        infer_main(infer_argv(tiny_model_dir, records, tmp_path / "out.json", "--ray"))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --ray needs Ray Data: pip install 'instructkgc[ray]'"


def test_bad_input_fails_before_ray_work(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"instruction": "x"}\n{"instruction": \n', encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        infer_main(infer_argv(tiny_model_dir, bad, tmp_path / "out.json", "--ray"))
    assert exc.value.code == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith(f"{bad}:2: invalid JSON")
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "out.json.parts").exists()


def test_parquet_input_on_ray_writes_what_one_process_writes_from_jsonl(tiny_model_dir, records, one_process,
                                                                        tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [json.loads(line) for line in records.read_text(encoding="utf-8").splitlines()]
    table = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), table)
    out = tmp_path / "ray.json"
    counts = infer_run(infer_argv(tiny_model_dir, table, out, "--ray", "--num_workers", "2"))
    assert out.read_bytes() == one_process[0]
    assert counts.as_dict() == one_process[1].as_dict()


def test_bad_parquet_fails_before_ray_work(tiny_model_dir, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "x"}, {"instruction": None}]), bad)
    with pytest.raises(SystemExit) as exc:
        infer_main(infer_argv(tiny_model_dir, bad, tmp_path / "out.json", "--ray"))
    assert exc.value.code == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err == f"{bad}:2: record has no 'instruction' string"
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "out.json.parts").exists()


def test_ray_vllm_without_vllm_names_the_extra(tiny_model_dir, records, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(SystemExit) as exc:
        infer_main(infer_argv(tiny_model_dir, records, tmp_path / "out.json", "--ray", "--backend", "vllm"))
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == \
        "error: --backend vllm needs vLLM (a CUDA machine): pip install 'instructkgc[vllm]'"
    assert not (tmp_path / "out.json.parts").exists()


def test_ray_vllm_without_rays_llm_processor_says_so(monkeypatch):
    import types

    from instructkgc.utils import UsageError

    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setitem(sys.modules, "ray.data.llm", None)
    with pytest.raises(UsageError) as err:
        distributed.require_ray_llm()
    assert str(err.value).startswith("--ray --backend vllm runs on Ray's LLM processor (ray.data.llm), which does "
                                     "not import here (")
    assert "\n" not in str(err.value)


def test_ray_vllm_needs_whole_gpus_per_worker_and_gpus(tiny_model_dir, records, tmp_path, monkeypatch, capsys):
    from instructkgc.utils import UsageError

    monkeypatch.setattr(distributed, "require_ray_llm", lambda: None)  # as if vLLM and ray.data.llm were there
    with pytest.raises(SystemExit) as exc:
        infer_main(infer_argv(tiny_model_dir, records, tmp_path / "out.json", "--ray", "--backend", "vllm",
                              "--gpus_per_worker", "0.5"))
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: --ray --backend vllm: --gpus_per_worker is the "
                                               "tensor-parallel size of each engine, a whole number, got 0.5")
    with pytest.raises(UsageError, match="runs vLLM engines on GPUs: the cluster has none"):
        distributed.VLLMInferJob.dataset(None, ray, None, workers=2, gpus=0.0, rows_per_block=8)


def test_extract_ray_vllm_engines_get_the_workers_gpus_as_tensor_parallel_size(monkeypatch):
    import instructkgc.infer
    from instructkgc.extract.command import build_parser, load_engine

    seen = []
    monkeypatch.setattr(instructkgc.infer, "build_engine", lambda *a: seen.append(a[4]) or (None, None, None))
    base = ["--task", "NER", "--schema", '["person"]', "--input", "x", "--output", "y", "--model_name_or_path", "m"]
    for extra in (["--backend", "vllm", "--ray", "--gpus_per_worker", "2"], ["--backend", "vllm"],
                  ["--ray", "--gpus_per_worker", "2"]):
        load_engine(build_parser().parse_args(base + extra), constrained=False)
    assert [a.tensor_parallel_size for a in seen] == [2, 1, 1]
