"""Constrained decoding: with a random tiny model, every answer parses and has the task's shape, for every
task; the closing policy finishes JSON within a tight token budget; missing xgrammar names the extra."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ie2instruction.tasks import get_task
from instructkgc.infer import SamplingSettings
from instructkgc.infer.hf_engine import HFEngine
from instructkgc.infer.records import answer_schema
from instructkgc.template import build_prompt_ids, get_template_and_fix_tokenizer, stop_token_ids

pytest.importorskip("xgrammar")

REPO = Path(__file__).resolve().parents[1]
TASKS = ["NER", "RE", "SPO", "EE", "EET", "EEA", "KG"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = get_template_and_fix_tokenizer("llama2", tok)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tok, template


def test_records(task, tmp_path, n=3):
    out = tmp_path / f"{task}.json"
    subprocess.run([sys.executable, str(REPO / "ie2instruction/convert_func.py"), "--src_path",
                    str(REPO / "data" / task / "sample.json"), "--tgt_path", str(out), "--schema_path",
                    str(REPO / "data" / task / "schema.json"), "--task", task, "--split", "test", "--split_num",
                    "4"], check=True, capture_output=True)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()][:n]


test_records.__test__ = False


@pytest.mark.parametrize("task", TASKS)
def test_every_answer_parses_with_the_task_shape(task, tiny, tmp_path, max_new_tokens=72):
    model, tok, template = tiny
    records = test_records(task, tmp_path)
    prompts = [build_prompt_ids(template, tok, r, 512)[0] for r in records]
    schemas = [answer_schema(r) for r in records]
    engine = HFEngine(model, tok, stop_token_ids(template, tok), SamplingSettings(max_new_tokens=max_new_tokens),
                      batch_size=3, constrained=True)
    for record, schema, gen in zip(records, schemas, engine.generate(prompts, schemas)):
        assert gen.finished, gen.text
        answer = json.loads(gen.text)
        labels = json.loads(record["instruction"])["schema"]
        assert list(answer) == list(schema["properties"])  # keys = the chunk's labels, in order
        assert len(answer) == len(labels)
        assert get_task(task).parse(answer, labels) is not None


def test_missing_xgrammar_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['xgrammar'] = None\n"
            "from instructkgc.infer.constrained import require_xgrammar\n"
            "try:\n    require_xgrammar()\nexcept Exception as e:\n    print(e)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install 'instructkgc[constrained]'" in res.stdout


def test_closing_text_from_inside_a_free_key_before_fixed_keys(tiny_model_dir):
    """KG shape: entity names are free keys whose values have a fixed set of (non-ASCII) attribute keys. A quote
    that would open one of those keys must not be taken for the end of a string."""
    from instructkgc.infer.constrained import GrammarCache

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cache = GrammarCache(tok, len(tok), [tok.eos_token_id])
    value = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
    schema = {"type": "object", "required": ["人物"], "additionalProperties": False, "properties": {"人物": {
        "type": "object", "additionalProperties": {"type": "object", "additionalProperties": False,
                                                   "properties": {"出生地点": value, "国籍": value}}}}}
    for prefix in ('{"人物": {"Jank上海', '{"人物": {"Jank上海", '):
        matcher = cache.matcher(schema)
        if not matcher.accept_string(prefix.encode()):
            continue
        text = cache.closing_text(matcher, 100)
        assert text is not None, prefix
        tokens = cache.spell(matcher, text, 100)
        assert tokens and all(matcher.accept_token(t) for t in tokens) and matcher.is_completed()
        assert isinstance(json.loads(prefix + text.decode()), dict)


def test_allowed_tokens_are_the_bitmask_tokens(tiny_model_dir):
    """The greedy loop chooses among ``RowGrammar.allowed_tokens``: exactly the tokens whose logits xgrammar's own
    mask leaves finite, at every step of an answer (from few allowed tokens to nearly the whole vocabulary)."""
    from instructkgc.infer.constrained import GrammarCache, RowGrammar

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cache = GrammarCache(tok, len(tok), [tok.eos_token_id])
    schema = {"type": "object", "required": ["人物", "地点"], "additionalProperties": False,
              "properties": {"人物": {"type": "array", "items": {"type": "string"}},
                             "地点": {"type": "array", "items": {"type": "string"}}}}
    bitmask = cache.xgr.allocate_token_bitmask(1, cache.vocab_size)
    answer = '{"人物": ["张三", "Alice"], "地点": []}'
    sizes = set()
    for end in range(len(answer)):  # the state after every prefix of a valid answer
        row = RowGrammar(cache, cache.matcher(schema), 64)
        assert row.matcher.accept_string(answer[:end].encode())
        allowed = row.allowed_tokens(bitmask)
        scores = torch.zeros(1, cache.vocab_size)
        cache.xgr.apply_token_bitmask_inplace(scores, bitmask, vocab_size=cache.vocab_size)
        assert allowed.tolist() == torch.isfinite(scores[0]).nonzero().squeeze(1).tolist(), answer[:end]
        sizes.add(len(allowed))
    assert min(sizes) < 50 and max(sizes) > cache.vocab_size // 2
