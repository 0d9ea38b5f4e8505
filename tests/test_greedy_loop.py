"""The HF engine's greedy loop (continuous batching, shared-prefix reuse, jump-forward decoding, lookup drafts)
gives exactly the one-prompt-at-a-time ``generate`` answers, with and without constrained decoding, on both tiny
models."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from instructkgc.infer import SamplingSettings
from instructkgc.infer.greedy import LOOKUP_NGRAM, _Lookup, prefix_groups
from instructkgc.infer.hf_engine import HFEngine
from instructkgc.infer.records import answer_schema
from instructkgc.template import build_prompt_ids, get_template_and_fix_tokenizer, stop_token_ids

REPO = Path(__file__).resolve().parents[1]


def converted(task, tmp_path, split_num="4"):
    out = tmp_path / f"{task}.json"
    subprocess.run([sys.executable, str(REPO / "ie2instruction/convert_func.py"), "--src_path",
                    str(REPO / "data" / task / "sample.json"), "--tgt_path", str(out), "--schema_path",
                    str(REPO / "data" / task / "schema.json"), "--task", task, "--split", "test", "--split_num",
                    split_num], check=True, capture_output=True)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module", params=["tiny_model_dir", "tiny_qwen_dir"])
def tiny(request):
    path = request.getfixturevalue(request.param)
    tok = AutoTokenizer.from_pretrained(path)
    template = get_template_and_fix_tokenizer("qwen" if "qwen" in request.param else "llama2", tok)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, tok, template


def engine(tiny, batch_size, max_new_tokens, constrained=False, **options):
    model, tok, template = tiny
    return HFEngine(model, tok, stop_token_ids(template, tok), SamplingSettings(max_new_tokens=max_new_tokens),
                    batch_size=batch_size, constrained=constrained, **options)


@pytest.fixture(scope="module")
def ner(tiny, tmp_path_factory):
    _, tok, template = tiny
    records = converted("NER", tmp_path_factory.mktemp("ner"))[:7]
    prompts = [build_prompt_ids(template, tok, r, 512)[0] for r in records]
    return prompts, [answer_schema(r) for r in records]


@pytest.fixture(scope="module")
def single_free(tiny, ner):
    return engine(tiny, 1, 40, continuous=False).generate(ner[0])


@pytest.fixture(scope="module")
def single_constrained(tiny, ner):
    pytest.importorskip("xgrammar")
    return engine(tiny, 1, 40, constrained=True, continuous=False).generate(*ner)


def same(a, b):
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.num_tokens for g in a] == [g.num_tokens for g in b]
    assert [g.finished for g in a] == [g.finished for g in b]


@pytest.mark.parametrize("options", [{}, {"prefix_reuse": False}, {"lookup": False}])
def test_free_decoding_equals_one_at_a_time(tiny, ner, single_free, options):
    fast = engine(tiny, 3, 40, **options)
    same(fast.generate(ner[0]), single_free)
    stats = fast.loop.stats
    assert fast.loop is not None and stats.decode_passes > 0
    if not options:
        assert stats.reused_tokens > 0  # the shared prefix really was reused
    if options.get("lookup", True):
        assert 0 < stats.lookup_tokens < stats.drafted_tokens  # drafts were proposed, some kept, some not
        assert stats.decode_passes + len(ner[0]) < stats.new_tokens
    else:
        assert stats.drafted_tokens == 0


@pytest.mark.parametrize("options", [{}, {"jump_forward": False}, {"prefix_reuse": False}, {"lookup": False},
                                     {"jump_forward": False, "lookup": False}])
def test_constrained_decoding_equals_one_at_a_time(tiny, ner, single_constrained, options):
    fast = engine(tiny, 3, 40, constrained=True, **options)
    same(fast.generate(*ner), single_constrained)
    stats = fast.loop.stats
    if options.get("jump_forward", True):
        assert stats.forced_tokens > 0  # keys and separators came without a pass of their own
        assert stats.decode_passes + len(ner[0]) < stats.new_tokens
    else:
        assert stats.forced_tokens == 0
    if not options.get("lookup", True):
        assert stats.drafted_tokens == stats.lookup_tokens == 0
    assert 0 < stats.narrow_tokens < stats.new_tokens  # separators from few logits, free strings from whole rows


@pytest.mark.parametrize("group_rows", [1, 2])
def test_attention_groups_equal_one_at_a_time(tiny, ner, single_free, single_constrained, monkeypatch, group_rows):
    """Answers split into attention groups (each group's tokens attend over its own columns and a copy of the
    shared prefixes', in one SDPA call per group; rows join the emptiest group as others end) still give the
    one-at-a-time answers, free and constrained (drafts rejected in part, several prompt prefixes)."""
    from instructkgc.infer import greedy

    monkeypatch.setattr(greedy, "GROUP_ROWS", group_rows)
    free = engine(tiny, 3, 40)
    assert free.loop._groups == -(-3 // group_rows) > 1
    same(free.generate(ner[0]), single_free)
    assert 0 < free.loop.stats.lookup_tokens < free.loop.stats.drafted_tokens
    same(engine(tiny, 3, 40, constrained=True).generate(*ner), single_constrained)


@pytest.mark.parametrize("constrained", [False, True])
def test_drafts_partly_wrong_give_the_greedy_answers(tiny, ner, single_free, single_constrained, monkeypatch,
                                                     constrained):
    """Lookup drafts that are right for two tokens and then wrong (the random tiny models seldom repeat
    themselves, so the drafts here come from the answers themselves): the right tokens are kept, the wrong one
    is replaced by the greedy token and the rest dropped from the cache, and the answers stay one-at-a-time's."""
    from instructkgc.infer import greedy
    from instructkgc.infer.constrained import RowGrammar

    prompts, schemas = ner[0], ner[1] if constrained else [None] * len(ner[0])
    budget = 40
    base = engine(tiny, 3, budget, constrained=constrained, lookup=False)

    def grammars():
        return [RowGrammar(base.grammars, base.grammars.matcher(s), budget) if s else None for s in schemas]

    answers = {}
    base.loop.run(prompts, grammars(), lambda i, tokens: answers.__setitem__(tuple(prompts[i]), tokens))
    vocab = tiny[0].get_output_embeddings().weight.shape[0]

    class Drafts:  # stands in for the lookup: the true continuation, its third token wrong
        def __init__(self, prompt):
            self.answer = answers[tuple(prompt)]

        def draft(self, answer, pending, limit):
            start = len(answer) + len(pending)
            draft = list(self.answer[start:start + limit])
            if len(draft) > 2:
                draft[2] = (draft[2] + 1) % vocab
            return draft

    monkeypatch.setattr(greedy, "_Lookup", Drafts)
    fast = engine(tiny, 3, budget, constrained=constrained)
    same(fast.generate(prompts, schemas if constrained else None),
         single_constrained if constrained else single_free)
    stats = fast.loop.stats
    assert stats.lookup_tokens > 0 and stats.drafted_tokens > stats.lookup_tokens
    assert stats.decode_passes < base.loop.stats.decode_passes


def test_wrapped_output_layer_gets_whole_logits(tiny, ner, single_constrained):
    """An output layer with a hook (or a LoRA / modules_to_save wrapper) is called as a module: the hook's effect
    is in every choice, none is made from its weight rows."""
    model = tiny[0]
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda module, args, out: seen.append(1))
    try:
        fast = engine(tiny, 3, 40, constrained=True)
        same(fast.generate(*ner), single_constrained)
    finally:
        handle.remove()
    assert seen and fast.loop.stats.narrow_tokens == 0


def test_mixed_rows_and_tight_budget(tiny, ner):
    """Constrained and free rows in one batch; a budget that makes the closing policy act."""
    pytest.importorskip("xgrammar")
    prompts, schemas = ner[0][:4], [s if k % 2 else None for k, s in enumerate(ner[1][:4])]
    single = engine(tiny, 1, 24, constrained=True, continuous=False).generate(prompts, schemas)
    same(engine(tiny, 3, 24, constrained=True).generate(prompts, schemas), single)


def test_lookup_drafts():
    """A draft is what followed the latest earlier occurrence of the last n-gram of prompt + answer + forced
    tokens; the n-gram that ends the sequence itself does not count."""
    assert LOOKUP_NGRAM == 3
    prompt = [5, 1, 2, 3, 4, 9, 1, 2, 3, 7, 8]
    lookup = _Lookup(prompt)
    assert lookup.draft([], [], 4) == []  # (3, 7, 8) occurred nowhere before
    assert lookup.draft([1, 2], [3], 4) == [7, 8, 1, 2]  # latest (1, 2, 3): the one followed by 7
    assert lookup.draft([1, 2, 3], [], 2) == [7, 8]  # (1, 2, 3) ending the sequence is not its own match
    assert lookup.draft([1, 2, 3, 6], [], 4) == []
    assert lookup.draft([1, 2, 3, 6, 1, 2], [3], 4) == [6, 1, 2]  # the answer's own (1, 2, 3), followed by 6


def test_prefix_groups():
    a = [1] * 20 + [2, 3]
    b = [1] * 20 + [2, 4, 5]
    c = [1] * 18 + [9]
    d = [7, 7]
    order, shared = prefix_groups([a, b, c, d], min_prefix=16)
    assert shared == [21, 21, 0, 0]
    assert sorted(order) == [0, 1, 2, 3] and abs(order.index(0) - order.index(1)) == 1
    # a prefix always leaves one token of each prompt to compute
    assert prefix_groups([a, a[:17]], min_prefix=16)[1] == [16, 16]


def test_sampling_still_uses_generate(tiny):
    model, tok, template = tiny
    eng = HFEngine(model, tok, stop_token_ids(template, tok), SamplingSettings(max_new_tokens=4, do_sample=True))
    assert eng.loop is None


@pytest.mark.parametrize("attention,group_rows", [("sdpa", 4), ("sdpa", 1), ("eager", 4)])
def test_sliding_window_layers_equal_one_at_a_time(tiny_qwen_dir, tmp_path, monkeypatch, attention, group_rows):
    """A model whose second layer sees only the last 16 positions (prompts are longer): the packed mask applies
    the window like the model's own mask does, under SDPA (in one attention group or one per answer) and under
    eager attention (an additive mask)."""
    from instructkgc.infer import greedy

    monkeypatch.setattr(greedy, "GROUP_ROWS", group_rows)
    tok = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    template = get_template_and_fix_tokenizer("qwen", tok)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir, dtype=torch.float32, use_sliding_window=True,
                                                 sliding_window=16, attn_implementation=attention,
                                                 layer_types=["full_attention", "sliding_attention"]).eval()
    assert model.config.layer_types[1] == "sliding_attention"
    prompts = [build_prompt_ids(template, tok, r, 512)[0] for r in converted("NER", tmp_path)[:5]]
    assert min(len(p) for p in prompts) > 16
    tiny = (model, tok, template)
    same(engine(tiny, 2, 20).generate(prompts), engine(tiny, 1, 20, continuous=False).generate(prompts))
