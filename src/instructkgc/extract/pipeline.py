"""The extraction pipeline: documents -> windows -> instruction records -> engine -> parsed, grounded, merged.

Instruction records are built by :class:`ie2instruction.convert.Converter` exactly as ``convert_func --split
test`` builds them, one per window and schema chunk, and encoded with the model's template, so released models
see their training format. Each window's prompt fits ``cutoff_len``: the text budget is ``cutoff_len`` minus
the tokens of the instruction with the longest schema chunk, and every window is checked against the real
prompt length before it is used.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence

from ie2instruction.answers import INVALID, load_answer
from ie2instruction.convert import Converter
from ie2instruction.io import dumps
from ie2instruction.tasks import Sampler, Schema, Task
from ie2instruction.tasks.items import Item, Result

from ..template import Template, record_query
from ..utils import UsageError
from .documents import Document
from .ground import GroundStats, ground
from .merge import merge_items
from .windows import Span, plan_windows

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")


def detect_language(text: str) -> str:
    """``zh`` when at least a tenth of the non-space characters are CJK, else ``en``."""
    letters = sum(not c.isspace() for c in text)
    return "zh" if letters and len(_CJK.findall(text)) * 10 >= letters else "en"


class PromptBuilder:
    """Instruction records and prompt ids for one task, schema, template and tokenizer."""

    def __init__(self, task: Task, schema: Schema, split_num: int, template: Template, tokenizer,
                 cutoff_len: int, system: Optional[str] = None):
        self.task, self.schema, self.split_num = task, schema, split_num
        self.template, self.tokenizer, self.cutoff_len, self.system = template, tokenizer, cutoff_len, system
        self._converters: dict[str, Converter] = {}
        self._overhead: dict[str, int] = {}

    def converter(self, language: str) -> Converter:
        conv = self._converters.get(language)
        if conv is None:
            conv = Converter(self.task, self.schema, "test", self.split_num, language, "extract", Sampler())
            self._converters[language] = conv
        return conv

    def chunks(self, language: str) -> list[list]:
        return [c for c, _ in self.converter(language).chunks(None)]

    def records(self, text: str, language: str) -> list[dict]:
        """The instruction records of ``text``, one per schema chunk (as ``convert_func --split test``)."""
        import json

        return [json.loads(line) for line in self.converter(language).record_lines({"text": text})]

    def prompt_ids(self, record: dict) -> list[int]:
        return self.template.encode_oneturn(self.tokenizer, record_query(record), "", self.system)[0]

    def prompts(self, text: str, language: str) -> list[list[int]]:
        return [self.prompt_ids(r) for r in self.records(text, language)]

    def overhead(self, language: str) -> int:
        """Prompt tokens without any text: the longest over the schema chunks."""
        if language not in self._overhead:
            self._overhead[language] = max(map(len, self.prompts("", language)))
        return self._overhead[language]

    def text_tokens(self, text: str) -> int:
        """Tokens ``text`` adds to a prompt, where it is written JSON-escaped."""
        return len(self.tokenizer.encode(dumps(text)[1:-1], add_special_tokens=False))

    def budget(self, language: str) -> int:
        budget = self.cutoff_len - self.overhead(language)
        if budget < 1:
            raise UsageError(f"--cutoff_len {self.cutoff_len} leaves no room for text: the instruction and the "
                             f"longest schema chunk take {self.overhead(language)} tokens; raise --cutoff_len "
                             "or lower --split_num")
        return budget

    def windows(self, text: str, language: str, overlap: int) -> list[tuple[Span, list[list[int]]]]:
        """Windows of ``text`` with the prompt ids of each (one per schema chunk), every prompt within
        ``cutoff_len``."""
        cache: dict[str, list[list[int]]] = {}

        def fits(window: str) -> bool:
            prompts = cache.get(window)
            if prompts is None:
                prompts = cache[window] = self.prompts(window, language)
            return all(len(p) <= self.cutoff_len for p in prompts)

        spans = plan_windows(text, self.budget(language), self.text_tokens, overlap, fits)
        out = []
        for s, e in spans:
            window = text[s:e]
            if window not in cache:
                fits(window)
            out.append(((s, e), cache[window]))
        return out


@dataclass
class DocStats:
    windows: int = 0
    prompts: int = 0
    parse_failures: int = 0
    cut_off: int = 0
    ungrounded: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Summary:
    """Totals over all documents, printed on stderr at the end."""

    documents: int = 0
    windows: list[int] = field(default_factory=list)
    prompts: int = 0
    parse_failures: int = 0
    cut_off: int = 0
    ungrounded: int = 0
    items: int = 0

    def add(self, stats: DocStats, items: int) -> None:
        self.documents += 1
        self.windows.append(stats.windows)
        self.prompts += stats.prompts
        self.parse_failures += stats.parse_failures
        self.cut_off += stats.cut_off
        self.ungrounded += stats.ungrounded
        self.items += items

    def lines(self, task: str, field_name: str, keep_ungrounded: bool) -> list[str]:
        w = self.windows
        if len(w) <= 20:
            per_doc = ", ".join(map(str, w))
        else:
            per_doc = f"min {min(w)}, mean {sum(w) / len(w):.1f}, max {max(w)}"
        dropped = ("kept (--keep_ungrounded)" if keep_ungrounded
                   else f"{self.ungrounded} ungrounded spans dropped (--keep_ungrounded keeps them)")
        return [
            f"extract {task}: {self.documents} documents, {sum(w)} windows (per document: {per_doc}), "
            f"{self.prompts} prompts",
            f"extract {task}: {self.items} {field_name}; {self.parse_failures} answers not parseable, "
            f"{self.cut_off} answers cut off at --max_new_tokens; {dropped}",
        ]


@dataclass
class _Request:
    doc: int
    window: Span
    chunk: list
    prompt: list[int]
    text: str  # the window's text: what grounded decoding limits spans to


class Extractor:
    """Runs the pipeline over documents with an engine (``Engine.generate(prompts, json_schemas)``)."""

    def __init__(self, builder: PromptBuilder, engine, language: str = "auto", overlap: int = 64,
                 constrained: bool = False, keep_ungrounded: bool = False, block_size: int = 256,
                 grounded: bool = False):
        if language not in ("auto", "zh", "en"):
            raise UsageError(f"--language must be zh, en or auto, got {language!r}")
        if overlap < 0:
            raise UsageError("--window_overlap must be >= 0")
        self.builder, self.engine, self.language, self.overlap = builder, engine, language, overlap
        self.constrained, self.keep, self.grounded = constrained, keep_ungrounded, grounded
        self.block_size = block_size
        self.task = builder.task
        self.field = self.task.result_field
        self.summary = Summary()
        self.bar = None  # a tqdm bar over prompts, set by the command on a terminal

    def _requests(self, index: int, doc: Document, stats: DocStats) -> list[_Request]:
        language = detect_language(doc.text) if self.language == "auto" else self.language
        chunks = self.builder.chunks(language)
        out = []
        for window, prompts in self.builder.windows(doc.text, language, self.overlap):
            stats.windows += 1
            text = doc.text[window[0]:window[1]]
            out.extend(_Request(index, window, c, p, text) for c, p in zip(chunks, prompts))
        stats.prompts += len(out)
        return out

    def _generate(self, requests: Sequence[_Request]) -> list:
        prompts = [r.prompt for r in requests]
        if not prompts:
            return []
        schemas = [self._schema(r) for r in requests] if self.constrained else None
        if self.bar is None:
            return self.engine.generate(prompts, schemas)
        return self.engine.generate(prompts, schemas, progress=lambda n, tokens: self.bar.update(n))

    def _schema(self, request: _Request) -> dict:
        """The answer's JSON schema; with grounded decoding, extractive strings must be spans of the window."""
        schema = self.task.answer_schema(request.chunk)
        if self.grounded:
            from ..infer.grammar import SPAN_TEXT, has_spans

            if has_spans(schema):
                schema[SPAN_TEXT] = request.text
        return schema

    def _result(self, doc: Document, items: list[Item], stats: DocStats) -> Result:
        result = Result(doc.id, doc.text, self.task.name, self.field, merge_items(items),
                        {**doc.fields, "stats": stats.as_dict()})
        self.summary.add(stats, len(result.items))
        return result

    def run(self, documents: Iterable[Document]) -> Iterator[Result]:
        """One result per document, in input order (documents are batched together for the engine)."""
        block: list[tuple[Document, DocStats]] = []
        requests: list[_Request] = []
        for doc in documents:
            stats = DocStats()
            requests.extend(self._requests(len(block), doc, stats))
            block.append((doc, stats))
            if len(requests) >= self.block_size:
                yield from self._finish(block, requests)
                block, requests = [], []
        if block:
            yield from self._finish(block, requests)

    def _finish(self, block, requests) -> Iterator[Result]:
        items: list[list[Item]] = [[] for _ in block]
        gstats = [GroundStats() for _ in block]
        for req, gen in zip(requests, self._generate(requests)):
            doc, stats = block[req.doc]
            text = getattr(gen, "text", gen)
            if getattr(gen, "finished", True) is False:
                stats.cut_off += 1
            value, _ = load_answer(text, repair=True)
            tuples = None if value is INVALID else self.task.extract_tuples(value, req.chunk)
            if tuples is None:
                stats.parse_failures += 1
                continue
            items[req.doc].extend(ground(self.task, tuples, doc.text, req.window, self.keep,
                                         gstats[req.doc]))
        for (doc, stats), found, g in zip(block, items, gstats):
            stats.ungrounded = g.ungrounded
            yield self._result(doc, found, stats)
