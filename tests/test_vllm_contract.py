"""The vLLM engine's contract, on the CPU, against the real vLLM 0.32 classes.

vLLM needs a GPU to generate, but what the engine gives it can be checked without one: the vLLM wheel is
installed without its dependencies (plus the few small packages its argument classes import) into
``.cache/vllm-0.32.0-nodeps`` once, and only ``SamplingParams``, ``StructuredOutputsParams``, ``LoRARequest``,
``EngineArgs`` and the logits-processor interface are imported. Without the wheel (offline) the tests skip.

``vllm.LLM`` itself is replaced by :class:`ReferenceLLM`, which validates its keyword arguments with
``EngineArgs`` and generates greedily on the tiny model the way vLLM does from the objects it is given
(prompt ids, stop ids, eos handling, budget, the grammar compiled from the EBNF text with vLLM's tokenizer
table). So the HF and vLLM paths are compared on the same records: prompt ids, stops, budgets and grammar.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from samples import convert_sample

pytest.importorskip("xgrammar")

REPO = Path(__file__).resolve().parents[1]
VLLM_VERSION = "0.32.0"
TARGET = REPO / ".cache" / f"vllm-{VLLM_VERSION}-nodeps"
# Imported by vllm's argument classes and not necessarily in our environment (ours win when present).
SMALL_DEPS = ["msgspec==0.23.0", "cbor2==6.3.0", "pyzmq==27.3.0", "aiohttp==3.14.5", "multidict==7.2.1",
              "yarl==1.25.1", "propcache==0.5.4", "aiohappyeyeballs==2.7.1", "aiosignal==1.4.0",
              "frozenlist==1.8.0", "openai-harmony==0.0.8", "openai==3.57.0", "sniffio==1.3.1",
              "cloudpickle==3.1.3", "pybase64==1.5.1", "cachetools==8.0.2", "uvloop==0.23.0"]


def _install_wheel() -> None:
    """pip-install vLLM and the small deps, without dependencies, into TARGET (atomically)."""
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TARGET.name + ".", dir=TARGET.parent))
    try:
        res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              "--no-deps", "--target", str(tmp), f"vllm=={VLLM_VERSION}", *SMALL_DEPS],
                             capture_output=True, text=True, timeout=1200)
        if res.returncode != 0:
            lines = (res.stderr or res.stdout).strip().splitlines()
            pytest.skip(f"cannot install the vLLM {VLLM_VERSION} wheel (offline?): {lines[-1] if lines else ''}")
        try:
            os.replace(tmp, TARGET)
        except OSError:  # another run installed it meanwhile
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def vllm():
    if not (TARGET / "vllm").is_dir():
        _install_wheel()
    sys.path.append(str(TARGET))
    try:
        from vllm.sampling_params import SamplingParams  # noqa: F401  (imported in the order that works)
        from vllm.engine.arg_utils import EngineArgs  # noqa: F401
        from vllm.lora.request import LoRARequest  # noqa: F401
        import vllm as module
    except Exception as exc:  # noqa: BLE001  (any import problem means: cannot check here)
        sys.path.remove(str(TARGET))
        pytest.skip(f"vLLM {VLLM_VERSION} argument classes do not import here: {type(exc).__name__}: {exc}")
    assert module.__version__ == VLLM_VERSION
    yield module
    sys.path.remove(str(TARGET))


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


class ReferenceLLM:
    """Stands in for ``vllm.LLM`` on the CPU: checks the keyword arguments with vLLM's ``EngineArgs`` and
    generates greedily as vLLM does from what it is given."""

    instances: list = []

    def __init__(self, **kwargs):
        import xgrammar as xgr
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
        from vllm.engine.arg_utils import EngineArgs

        EngineArgs(**kwargs)  # unknown or ill-typed arguments fail here
        self.kwargs, self.calls = kwargs, []
        path = kwargs["model"]
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs["tokenizer"])  # vLLM's own: from disk
        self.generation_config = GenerationConfig.from_pretrained(path).to_diff_dict()
        vocab = self.model.config.vocab_size
        info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vocab)  # as vLLM's xgrammar backend
        self.compiler, self.xgr, self.vocab = xgr.GrammarCompiler(info), xgr, vocab
        ReferenceLLM.instances.append(self)

    def generate(self, prompts, sampling_params, *, lora_request=None, use_tqdm=True):
        assert lora_request is None and use_tqdm is False
        self.calls.append((prompts, sampling_params))
        outputs = []
        for prompt, params in zip(prompts, sampling_params):
            params = params.clone()
            params.update_from_generation_config(self.generation_config, self.tokenizer.eos_token_id)
            tokens, reason = self._greedy(prompt["prompt_token_ids"], params)
            outputs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=tokens, finish_reason=reason)]))
        return outputs

    @torch.inference_mode()
    def _greedy(self, prompt, params):
        assert params.temperature == 0.0 and params.repetition_penalty == 1.0 and not params.detokenize
        matcher, bitmask = None, None
        if params.structured_outputs is not None:
            grammar = self.compiler.compile_grammar(params.structured_outputs.grammar)
            matcher = self.xgr.GrammarMatcher(grammar, override_stop_tokens=sorted(params.all_stop_token_ids))
            bitmask = self.xgr.allocate_token_bitmask(1, self.vocab)
        stops = set(params.stop_token_ids) | ({params.eos_token_id} - {None})
        out, past, x = [], None, torch.tensor([prompt])
        while len(out) < params.max_tokens:
            result = self.model(input_ids=x, past_key_values=past, use_cache=True)
            past, logits = result.past_key_values, result.logits[:, -1].float()
            if matcher is not None:
                matcher.fill_next_token_bitmask(bitmask)
                self.xgr.apply_token_bitmask_inplace(logits, bitmask)
            token = int(logits.argmax())
            out.append(token)
            if token in stops:
                return out, "stop"
            if matcher is not None:
                assert matcher.accept_token(token)
            x = torch.tensor([[token]])
        return out, "length"


def run_cli(tiny_model_dir, input_file, output_file, *extra):
    from instructkgc.inference import run

    return run(["--model_name_or_path", tiny_model_dir, "--template", "llama2", "--input_file", str(input_file),
                "--output_file", str(output_file), "--cutoff_len", "512", *extra])


@pytest.fixture
def reference_llm(vllm, monkeypatch):
    ReferenceLLM.instances.clear()
    monkeypatch.setitem(vllm.__dict__, "LLM", ReferenceLLM)  # setattr would import the real one
    return ReferenceLLM


def test_vllm_path_equals_hf_path(reference_llm, tiny_model_dir, tmp_path):
    """Unconstrained greedy: the same answers (prompt ids, stops, budget and decoding agree), in one call."""
    records = convert_sample("NER", tmp_path / "ner.json", split_num=4, limit=6)
    budget = ["--max_new_tokens", "24", "--batch_size", "2"]
    run_cli(tiny_model_dir, records, tmp_path / "hf.json", *budget)
    counts = run_cli(tiny_model_dir, records, tmp_path / "vllm.json", *budget, "--backend", "vllm")
    assert read_jsonl(tmp_path / "vllm.json") == read_jsonl(tmp_path / "hf.json")
    (llm,) = reference_llm.instances
    assert len(llm.calls) == 1 and len(llm.calls[0][0]) == counts.records == 6  # the whole file at once
    assert llm.kwargs["max_model_len"] == 512 + 24 and "quantization" not in llm.kwargs
    assert llm.kwargs["dtype"] == "float16"  # the HF engine's default on a GPU for this fp32 config


def test_constrained_vllm_answers_parse_within_the_budget(reference_llm, tiny_model_dir, tmp_path):
    from instructkgc.infer.constrained import schema_ebnf
    from instructkgc.infer.records import answer_schema

    records = convert_sample("RE", tmp_path / "re.json", split_num=4, limit=4)
    budget = 40
    counts = run_cli(tiny_model_dir, records, tmp_path / "vllm.json", "--max_new_tokens", str(budget),
                     "--backend", "vllm", "--constrained_decoding")
    (llm,) = reference_llm.instances
    prompts, params = llm.calls[0]
    assert [p.structured_outputs.grammar for p in params] == [schema_ebnf(answer_schema(r, grounded=True))
                                                              for r in read_jsonl(records)]
    assert counts.invalid_json == 0 and counts.cut_off == 0
    for answer in read_jsonl(tmp_path / "vllm.json"):
        json.loads(answer["output"])
        assert len(llm.tokenizer.encode(answer["output"], add_special_tokens=False)) < budget + 4
    assert counts.new_tokens <= budget * counts.records


def structured_output_module(monkeypatch, name):
    """A module of ``vllm.v1.structured_output`` without its package ``__init__`` (which imports the server)."""
    import importlib
    import types

    package = types.ModuleType("vllm.v1.structured_output")
    package.__path__ = [str(TARGET / "vllm" / "v1" / "structured_output")]
    monkeypatch.setitem(sys.modules, package.__name__, package)
    return importlib.import_module(f"{package.__name__}.{name}")


def test_vllm_grammar_equals_the_hf_grammar(vllm, tiny_model_dir, tmp_path, monkeypatch):
    """At every state along each HF answer, vLLM's grammar (the EBNF compiled with vLLM's tokenizer table and
    stop ids) allows exactly the tokens the HF engine's grammar allows."""
    import xgrammar as xgr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from instructkgc.infer import SamplingSettings
    from instructkgc.infer.constrained import schema_ebnf
    from instructkgc.infer.hf_engine import HFEngine
    from instructkgc.infer.records import answer_schema
    from instructkgc.infer.vllm_engine import sampling_params
    from instructkgc.template import build_prompt_ids, get_template_and_fix_tokenizer, stop_token_ids

    validate_xgrammar_grammar = structured_output_module(monkeypatch, "backend_xgrammar").validate_xgrammar_grammar
    grammar_is_likely_lark = structured_output_module(monkeypatch, "utils").grammar_is_likely_lark

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = get_template_and_fix_tokenizer("llama2", tok)
    stops = stop_token_ids(template, tok)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    hf = HFEngine(model, tok, stops, SamplingSettings(max_new_tokens=48), batch_size=4, constrained=True)
    records = [r for task in ("NER", "EE")
               for r in read_jsonl(convert_sample(task, tmp_path / f"{task}.json", split_num=4, limit=2))]
    schemas = [answer_schema(r) for r in records]
    answers = hf.generate([build_prompt_ids(template, tok, r, 512)[0] for r in records], schemas)
    disk_tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(disk_tok, vocab_size=len(disk_tok)))
    for schema, answer in zip(schemas, answers):
        params = sampling_params(SamplingSettings(max_new_tokens=48), stops, schema_ebnf(schema))
        validate_xgrammar_grammar(params)  # vLLM's own request check
        assert not grammar_is_likely_lark(params.structured_outputs.grammar)  # compiled as EBNF
        params.update_from_generation_config({}, disk_tok.eos_token_id)
        assert params.all_stop_token_ids == set(stops)
        theirs = xgr.GrammarMatcher(compiler.compile_grammar(params.structured_outputs.grammar),
                                    override_stop_tokens=sorted(params.all_stop_token_ids))
        ours = hf.grammars.matcher(schema)
        a, b = (xgr.allocate_token_bitmask(1, len(tok)) for _ in range(2))
        path = tok.encode(answer.text, add_special_tokens=False) + [stops[0]]
        for step, token in enumerate(path):
            ours.fill_next_token_bitmask(a)
            theirs.fill_next_token_bitmask(b)
            assert torch.equal(a, b), f"masks differ at step {step} of {answer.text!r}"
            if not (ours.accept_token(token) and theirs.accept_token(token)):
                break  # re-encoding the text may pick other tokens than the model; the masks agreed so far
        json.loads(answer.text)


def test_sampling_params_and_lora_request(vllm, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from instructkgc.infer import SamplingSettings
    from instructkgc.infer.vllm_engine import llm_kwargs, lora_request, sampling_params
    from vllm.engine.arg_utils import EngineArgs
    from vllm.lora.request import LoRARequest

    settings = SamplingSettings(max_new_tokens=300, do_sample=True, temperature=0.7, top_p=0.9, top_k=0,
                                repetition_penalty=1.1, min_new_tokens=3, no_repeat_ngram_size=3)
    params = sampling_params(settings, [2, 7])
    assert (params.max_tokens, params.min_tokens, params.stop_token_ids) == (300, 3, [2, 7])
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty) == (0.7, 0.9, 0, 1.1)
    assert params.extra_args == {"no_repeat_ngram_size": 3} and params.structured_outputs is None
    adapter = tmp_path / "lora"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=12, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    request = lora_request(str(adapter))
    assert isinstance(request, LoRARequest) and request.lora_int_id == 1 and request.lora_path == str(adapter)
    infer_args = SimpleNamespace(tensor_parallel_size=2, gpu_memory_utilization=0.5)
    model_args = SimpleNamespace(trust_remote_code=True, model_revision="main")
    kwargs = llm_kwargs(tiny_model_dir, str(adapter), model_args, infer_args, settings, "bfloat16", 812)
    engine_args = EngineArgs(**kwargs)
    assert (engine_args.enable_lora, engine_args.max_lora_rank, engine_args.max_loras) == (True, 16, 1)
    assert (engine_args.gpu_memory_utilization, engine_args.tensor_parallel_size) == (0.5, 2)
    assert engine_args.generation_config == "vllm" and engine_args.dtype == "bfloat16"
    assert engine_args.structured_outputs_config.backend == "xgrammar"  # the EBNF sent is xgrammar's


def test_no_repeat_ngram_processor_equals_transformers(vllm):
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, _load_logitsprocs_by_fqcns

    from instructkgc.infer import SamplingSettings
    from instructkgc.infer.vllm_engine import NGRAM_PROCESSOR, sampling_params

    (cls,) = _load_logitsprocs_by_fqcns([NGRAM_PROCESSOR])
    assert issubclass(cls, LogitsProcessor)
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 3):
        params = sampling_params(SamplingSettings(no_repeat_ngram_size=n), [0])
        cls.validate_params(params)
        for _ in range(20):
            ids = torch.randint(0, 6, (int(torch.randint(1, 30, (1,), generator=gen)),), generator=gen).tolist()
            cut = len(ids) // 2
            proc = cls(None, torch.device("cpu"), False)
            proc.update_state(BatchUpdate(batch_size=1, removed=[], added=[(0, params, ids[:cut], ids[cut:])],
                                          moved=[]))
            ours = proc.apply(torch.zeros(1, 8))
            theirs = NoRepeatNGramLogitsProcessor(n)(torch.tensor([ids]), torch.zeros(1, 8))
            assert torch.equal(ours, theirs), (n, ids)


# ---- --ray --backend vllm: Ray's LLM processor is given what the vLLM engine gives vllm.LLM ----------------------
def ray_llm(vllm):
    """Ray's batch LLM module and its vLLM stage's request builder (they import with the small packages of the
    vLLM folder: aiohttp), or skip."""
    pytest.importorskip("ray")
    try:
        import ray.data.llm as llm
        from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMEngineWrapper
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"ray.data.llm does not import here: {type(exc).__name__}: {exc}")
    return llm, vLLMEngineWrapper


def through_ray_rows(rows):
    """Rows as Ray Data hands them from the preprocess map to the engine stage: stored as Arrow (one struct
    column), read back as numpy objects (lists become arrays)."""
    import pyarrow as pa

    column = pa.Table.from_pylist([{"__data": row} for row in rows]).column("__data")
    return list(column.to_numpy(zero_copy_only=False))


def ray_request(wrapper_cls, model_source, row):
    """What Ray's vLLM stage sends the engine for one row: its own ``_prepare_llm_request``, on a wrapper without
    an engine (that method reads only the row and the LoRA table)."""
    import asyncio

    wrapper = object.__new__(wrapper_cls)
    wrapper.task_type, wrapper.idx_in_batch_column, wrapper.request_id = "generate", "__idx", 0
    wrapper.model, wrapper.dynamic_lora_loading_path, wrapper.lora_name_to_request = model_source, None, {}

    async def prepare():
        wrapper.lora_lock = asyncio.Lock()
        return await wrapper._prepare_llm_request({**row, "__idx": 0})

    return asyncio.run(prepare())


def ray_job(tiny_model_dir, records, out, *extra):
    from instructkgc import distributed
    from instructkgc.args import parse_infer_args

    model_args, data_args, _, finetuning_args, generating_args, infer_args = parse_infer_args(
        ["--model_name_or_path", tiny_model_dir, "--template", "llama2", "--input_file", str(records),
         "--output_file", str(out), "--cutoff_len", "512", "--backend", "vllm", "--ray", *extra])
    return distributed.vllm_job(model_args, data_args, finetuning_args, generating_args, infer_args)


def test_ray_processor_config_and_requests(vllm, tiny_model_dir, tmp_path):
    """The processor config is Ray's real class with the vLLM engine's ``vllm.LLM`` arguments (valid for vLLM's
    engine arguments); every row becomes, in Ray's own stage code, the prompt ids, ``SamplingParams`` (stops,
    budget, grammar) and LoRA request that the single-process engine sends."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from vllm.engine.arg_utils import AsyncEngineArgs

    from ie2instruction.io import dumps
    from instructkgc import distributed
    from instructkgc.infer import SamplingSettings
    from instructkgc.infer.constrained import schema_ebnf
    from instructkgc.infer.records import answer_schema
    from instructkgc.infer.vllm_engine import llm_kwargs, lora_request, sampling_params
    from instructkgc.template import build_prompt_ids, get_template_and_fix_tokenizer, stop_token_ids

    llm, wrapper_cls = ray_llm(vllm)
    adapter = tmp_path / "lora"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    records = convert_sample("RE", tmp_path / "re.json", split_num=4, limit=3)
    job = ray_job(tiny_model_dir, records, tmp_path / "out.json", "--checkpoint_dir", str(adapter),
                  "--constrained_decoding", "--max_new_tokens", "40", "--gpus_per_worker", "2")
    kwargs = job.processor_config(workers=3)
    config = llm.vLLMEngineProcessorConfig(**kwargs)
    assert (config.model_source, config.concurrency, config.batch_size) == (tiny_model_dir, 3, job.block_rows())
    assert not (config.tokenize_stage or config.detokenize_stage or config.chat_template_stage)
    settings = SamplingSettings(max_new_tokens=40)
    fresh = job.processor_config(workers=3)["engine_kwargs"]  # (the config's validator adds its task_type)
    assert {"model": config.model_source, **fresh} == llm_kwargs(
        tiny_model_dir, str(adapter), job.model_args, job.infer_args, settings, "float16", 512 + 40)
    engine_kwargs = {k: v for k, v in config.engine_kwargs.items() if k != "task_type"}  # as Ray's stage does
    engine_args = AsyncEngineArgs(model=config.model_source, runner="generate", **engine_kwargs)
    assert (engine_args.enable_lora, engine_args.tensor_parallel_size, engine_args.max_model_len) == (True, 2, 552)
    assert engine_args.structured_outputs_config.backend == "xgrammar"

    tok = job._state()[0]
    template = get_template_and_fix_tokenizer("llama2", tok)
    items = distributed.inference_items(job.infer_args)
    rows = [{"key": k, "item": dumps(item)} for k, (_, item) in enumerate(items)]
    rows = through_ray_rows([{**row, **job.request(row)} for row in rows])
    for (_, item), row in zip(items, rows):
        request = ray_request(wrapper_cls, config.model_source, row)
        ids, _ = build_prompt_ids(template, tok, item["record"], 512)
        assert request.prompt_token_ids == ids
        grammar = schema_ebnf(answer_schema(item["record"], grounded=True))
        assert request.params == sampling_params(settings, stop_token_ids(template, tok), grammar)
        assert request.params.structured_outputs.grammar == grammar
        expected = lora_request(str(adapter))
        assert (request.lora_request.lora_int_id, request.lora_request.lora_path) == (1, expected.lora_path)


def test_ray_processor_rows_answer_as_the_vllm_engine(reference_llm, tiny_model_dir, tmp_path):
    """Ray's answers (token ids) turned into lines by the postprocess are the lines the single-process vLLM engine
    writes: stops, cut answers closed by the grammar, decoding; and the counts agree."""
    from ie2instruction.io import dumps
    from instructkgc import distributed

    llm, wrapper_cls = ray_llm(sys.modules["vllm"])
    records = convert_sample("RE", tmp_path / "re.json", split_num=4, limit=6)
    budget = ["--max_new_tokens", "16", "--constrained_decoding"]  # short: most answers are cut and closed
    counts = run_cli(tiny_model_dir, records, tmp_path / "engine.json", *budget, "--backend", "vllm")
    job = ray_job(tiny_model_dir, records, tmp_path / "ray.json", *budget)
    config = llm.vLLMEngineProcessorConfig(**job.processor_config(workers=1))
    engine = reference_llm(model=config.model_source, **job.processor_config(workers=1)["engine_kwargs"])
    items = distributed.inference_items(job.infer_args)
    rows = [{"key": k, "item": dumps(item)} for k, (_, item) in enumerate(items)]
    rows = through_ray_rows([{**row, **job.request(row)} for row in rows])
    lines, totals, budget_hit = [], {}, 0
    for row in rows:
        request = ray_request(wrapper_cls, config.model_source, row)
        (out,) = engine.generate([{"prompt_token_ids": request.prompt_token_ids}], [request.params],
                                 use_tqdm=False)
        tokens = out.outputs[0].token_ids
        budget_hit += len(tokens) == 16
        answered = job.answer({**row, "generated_tokens": tokens, "num_generated_tokens": len(tokens)})
        lines.append(answered["line"])
        for name, n in json.loads(answered["counts"]).items():
            totals[name] = totals.get(name, 0) + n
    assert budget_hit  # the closing of cut answers is compared too
    assert "".join(lines) == (tmp_path / "engine.json").read_text(encoding="utf-8")
    expected = counts.as_dict()
    assert {k: v for k, v in totals.items() if k not in ("records", "skipped")} == \
        {k: v for k, v in expected.items() if k not in ("records", "skipped")}
