"""Span-grounded decoding: the grammar accepts exactly the spans of the input (quotes, backslashes, control
characters and non-ASCII text included); a model that writes non-spans without grounding cannot with it."""
import json
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from ie2instruction.tasks import get_task
from instructkgc.infer import SamplingSettings
from instructkgc.infer.grammar import SPAN_TEXT, answer_grammar, is_span, span_units
from instructkgc.infer.hf_engine import HFEngine
from instructkgc.infer.records import answer_schema
from instructkgc.template import build_prompt_ids, get_template_and_fix_tokenizer, stop_token_ids

xgr = pytest.importorskip("xgrammar")

NER = get_task("NER").answer_schema(["a", "b"])
TEXTS = st.text(alphabet=st.sampled_from(list('ab c"\\\n\t\u00e9\u4e2d\u6587,.\x01/') + ["\U0001f600"]),
                min_size=0, max_size=40)


@pytest.fixture(scope="module")
def compiler():
    return xgr.GrammarCompiler(xgr.TokenizerInfo([]))


def matcher(compiler, schema, text):
    return xgr.GrammarMatcher(compiler.compile_grammar(answer_grammar(schema, text)))


def accepts(compiler, schema, text, answer: str) -> bool:
    m = matcher(compiler, schema, text)
    return m.accept_string(answer.encode("utf-8")) and m.is_completed()


def random_answer(compiler, schema, text, rng: random.Random, steps=400) -> str:
    """A random walk through the grammar, one character at a time, among the characters it allows."""
    alphabet = sorted(set(json.dumps(text, ensure_ascii=False)) | set('"[]{}, :NA'))
    m, out = matcher(compiler, schema, text), []
    for _ in range(steps):
        if m.is_completed() and rng.random() < 0.3:
            break
        allowed = [c for c in alphabet if m.fork().accept_string(c.encode("utf-8"))]
        if not allowed:
            break
        c = rng.choice(allowed)
        assert m.accept_string(c.encode("utf-8"))
        out.append(c)
    if not m.is_completed():  # finish the shortest way: close strings and containers
        for c in '"]}':
            while m.fork().accept_string(c.encode()) and not m.is_completed():
                m.accept_string(c.encode())
                out.append(c)
    return "".join(out) if m.is_completed() else ""


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, seed=st.integers(0, 2**16))
def test_every_accepted_string_is_a_span(compiler, text, seed):
    rng = random.Random(seed)
    for _ in range(3):
        answer = random_answer(compiler, NER, text, rng)
        if not answer:
            continue
        parsed = json.loads(answer)
        for value in parsed["a"] + parsed["b"]:
            assert value in text and is_span(value, text), (text, answer)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, data=st.data())
def test_every_span_is_accepted_and_nothing_else(compiler, text, data):
    units = span_units(text)
    assert "".join(units) == text
    words = [i for i, u in enumerate(units) if not u.isspace()]
    if words:
        i = data.draw(st.sampled_from(words))
        j = data.draw(st.sampled_from([k for k in words if k >= i]))
        span = "".join(units[i:j + 1])
        assert accepts(compiler, NER, text, json.dumps({"a": [span], "b": []}, ensure_ascii=False))
        assert not accepts(compiler, NER, text, json.dumps({"a": [span + "\u00a7"], "b": []}, ensure_ascii=False))
        # the same value written with \u escapes is not the canonical json.dumps form
        if any(ord(c) > 127 for c in span):
            assert not accepts(compiler, NER, text, json.dumps({"a": [span], "b": []}))
    assert not accepts(compiler, NER, text, '{"a": ["' + "zz" * 21 + '"], "b": []}')
    assert accepts(compiler, NER, text, '{"a": [], "b": []}')


def test_spans_stop_at_unit_boundaries(compiler):
    text = 'Obama, who met "Merkel" in 北京.'
    ok = ["Obama", "Obama, who", '"Merkel"', "Merkel", "北京", "京", "in 北京."]
    bad = ["bama", "Obama ", " who", "Merkel in", "Obamas", ""]
    for value in ok:
        assert is_span(value, text)
        assert accepts(compiler, NER, text, json.dumps({"a": [value], "b": []}, ensure_ascii=False)), value
    for value in bad:
        assert not is_span(value, text)
        assert not accepts(compiler, NER, text, json.dumps({"a": [value], "b": []}, ensure_ascii=False)), value


def test_fixed_and_free_parts_are_kept(compiler):
    text = "Aspirin caused a rash"
    ee = get_task("EE").answer_schema([{"event_type": "adverse event", "arguments": ["drug", "effect"]}])
    good = {"adverse event": [{"trigger": "caused", "arguments": {"drug": "Aspirin", "effect": ["a rash", "rash"]}}]}
    assert accepts(compiler, ee, text, json.dumps(good))
    assert accepts(compiler, ee, text, json.dumps({"adverse event": [
        {"trigger": "NAN", "arguments": {"drug": "NAN", "effect": "rash"}}]}))
    assert not accepts(compiler, ee, text, json.dumps({"adverse event": [
        {"trigger": "causes", "arguments": {"drug": "Aspirin", "effect": "rash"}}]}))
    # KG attribute values are not spans: the grammar is xgrammar's JSON-schema grammar, free strings allowed
    kg = get_task("KG").answer_schema([{"entity_type": "person", "attributes": ["born"]}])
    assert accepts(compiler, kg, text, json.dumps({"person": {"Nobody": {"born": "1900"}}}))
    # grounded off: the plain JSON-schema grammar
    ner = xgr.GrammarMatcher(compiler.compile_grammar(answer_grammar(NER, text, grounded=False)))
    assert ner.accept_string(b'{"a": ["anything"], "b": []}') and ner.is_completed()


def test_a_model_that_writes_non_spans_cannot(tiny_model_dir, tmp_path):
    """The random tiny model, nudged to open strings (tokens starting with a quote get +5), writes strings that are
    not in the input; grounded, it still writes strings, and every one is a span."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = get_template_and_fix_tokenizer("llama2", tok)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    quotes = torch.tensor([i for i in range(len(tok)) if tok.decode([i]).startswith('"')])
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: out.index_add_(
        -1, quotes, torch.full((*out.shape[:-1], len(quotes)), 5.0)))
    texts = ["Marie Curie worked in Paris with Pierre .", 'He said "no" to the \\ company Acme in 2019 .']
    records = [{"task": "NER", "instruction": json.dumps(
        {"instruction": "extract", "schema": ["person", "location", "organization"], "input": t})} for t in texts]
    prompts = [build_prompt_ids(template, tok, r, 256)[0] for r in records]
    engine = HFEngine(model, tok, stop_token_ids(template, tok), SamplingSettings(max_new_tokens=60),
                      batch_size=2, constrained=True)

    def strings(grounded):
        gens = engine.generate(prompts, [answer_schema(r, grounded=grounded) for r in records])
        out = []
        for text, gen in zip(texts, gens):
            assert gen.finished, gen.text
            out += [(text, v) for values in json.loads(gen.text).values() for v in values]
        return out

    free = strings(False)
    assert any(not is_span(v, t) for t, v in free), free  # the model does write non-spans
    grounded = strings(True)
    assert grounded, "the grounded answers name nothing: the test would prove nothing"
    assert all(v in t and is_span(v, t) for t, v in grounded), grounded


def test_grounded_schema_carries_the_input():
    record = {"task": "RE", "instruction": json.dumps({"instruction": "x", "schema": ["r"], "input": "A B"})}
    assert answer_schema(record, grounded=True)[SPAN_TEXT] == "A B"
    assert SPAN_TEXT not in answer_schema(record)


def test_beginning_an_event_is_checked_against_the_budget(tiny_model_dir):
    """An event object owes every argument role: beginning one far from the budget's end zone can make the answer
    unclosable, so the closing policy checks a token that may begin an item (``,``) and closes instead."""
    from instructkgc.infer.constrained import GrammarCache, RowGrammar

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cache = GrammarCache(tok, len(tok), [tok.eos_token_id])
    roles = [f"role {k}" for k in range(24)]
    text = "Aspirin caused a rash ."
    schema = {**get_task("EE").answer_schema([{"event_type": "adverse event", "arguments": roles}]), SPAN_TEXT: text}
    event = '{"trigger": "caused", "arguments": {' + ", ".join(f'"{r}": []' for r in roles) + "}}"
    m = cache.matcher(schema)
    assert m.accept_string(('{"adverse event": [' + event).encode())
    comma = next(t for t, raw in enumerate(cache.vocab) if raw == b",")
    begun = m.fork()
    assert begun.accept_token(comma)
    need = len(cache.spell(begun, cache.closing_text(begun, 400), 400))  # what the next event owes
    assert need > 2 * RowGrammar.SLACK

    def choice(step):
        scores = torch.zeros(len(tok))
        scores[comma] = 10.0
        RowGrammar(cache, m, max_new_tokens=1000).constrain(scores, step)
        return int(scores.argmax())

    step = 1000 - (RowGrammar.SLACK + need // 2)  # outside the end zone (estimate 0), too little room for it
    assert step % RowGrammar.CHECK_EVERY
    closing = choice(step)
    assert closing != comma and m.fork().accept_token(closing)
    assert choice(1000 - 2 * need - 1) == comma  # with room for it, the model's choice stands


def test_closing_text_from_every_point_of_a_grounded_answer(tiny_model_dir):
    """The closing policy can finish a grounded answer from anywhere, also just after a span's opening quote and
    when the text's own words are separators (``,`` ``:`` ``)``): it writes a word of the text, then closes."""
    from instructkgc.infer.constrained import GrammarCache

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cache = GrammarCache(tok, len(tok), [tok.eos_token_id])
    text = "Abbas II ( full name : Abbas Hilmy ) , born 2009 ."
    schema = {**NER, SPAN_TEXT: text}
    assert_closes_from_every_point(cache, schema, '{"a": [".", "Abbas II ( full name :", ", born 2009"], "b": [")"]}')


@pytest.mark.parametrize("grounded", [False, True])
def test_closing_text_from_every_point_of_an_event_answer(tiny_model_dir, grounded):
    """EE nests a value four brackets deep (argument object, event, event list, answer). Just after an argument
    value's opening quote, a second quote closes an empty string: the closing text must see that, although
    only ``}}`` and then ``]`` or ``, {`` can follow it (a whole PHEE answer, cut at the budget inside such a
    string, was once left unclosed)."""
    from instructkgc.infer.constrained import GrammarCache

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cache = GrammarCache(tok, len(tok), [tok.eos_token_id])
    chunk = [{"event_type": "adverse event", "trigger": True, "arguments": ["drug", "dosage"]},
             {"event_type": "other", "trigger": True, "arguments": ["effect"]}]
    schema = get_task("EE").answer_schema(chunk)
    if grounded:
        schema[SPAN_TEXT] = "the patient developed jaundice after 100 mg"
    assert_closes_from_every_point(cache, schema, (
        '{"adverse event": [{"trigger": "developed", "arguments": {"drug": "NAN", "dosage": "100 mg"}}, '
        '{"trigger": "after", "arguments": {"drug": ["jaundice"], "dosage": "100"}}], "other": []}'))


def assert_closes_from_every_point(cache, schema, answer):
    """From the grammar state after every prefix of ``answer``, the closing text completes valid JSON."""
    for end in range(len(answer)):
        m = cache.matcher(schema)
        assert m.accept_string(answer[:end].encode())
        closing = cache.closing_text(m, 200)
        assert closing is not None, answer[:end]
        assert m.accept_string(closing) and m.is_completed(), (answer[:end], closing)
        json.loads(answer[:end] + closing.decode())


@pytest.mark.parametrize("grounded", [False, True])
def test_spelling_is_the_longest_accepted_match(tiny_model_dir, grounded):
    """``spell`` remembers the longest matches of each text and asks the grammar only about those: from every
    point of an answer its tokens are those of the search it stands for (at each byte the longest vocabulary
    match the grammar accepts; none if a byte has none or more than ``limit`` are needed), for closing texts,
    texts the grammar refuses part of, and budgets just too short."""
    from instructkgc.infer.constrained import GrammarCache

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cache = GrammarCache(tok, len(tok), [tok.eos_token_id])

    def search(matcher, data, limit):
        sim, pos, tokens = matcher.fork(), 0, []
        while pos < len(data):
            sizes = range(min(cache.max_token_bytes, len(data) - pos), 0, -1)
            tid = next((cache.by_bytes[data[pos:pos + n]] for n in sizes if data[pos:pos + n] in cache.by_bytes
                        and sim.accept_token(cache.by_bytes[data[pos:pos + n]])), None)
            if tid is None or len(tokens) == limit:
                return None
            tokens.append(tid)
            pos += len(cache.vocab[tid])
        return tokens

    schema = {**NER, SPAN_TEXT: "Abbas II ( full name : Abbas Hilmy ) , born 2009 ."} if grounded else NER
    answer = '{"a": [".", "Abbas II ( full name :", ", born 2009"], "b": [")"]}'
    refused = 0
    for end in range(len(answer)):
        m = cache.matcher(schema)
        assert m.accept_string(answer[:end].encode())
        closing = cache.closing_text(m, 200)
        for text in (closing, closing + b'"x', b"]]" + closing, answer[end:end + 7].encode()):
            expected = search(m, text, 200)
            refused += expected is None
            assert cache.spell(m, text, 200) == expected, (answer[:end], text)
            if expected:
                assert cache.spell(m, text, len(expected) - 1) is None
                assert cache.spell(m, text, len(expected)) == expected
    assert refused  # some texts were refused part of the way
