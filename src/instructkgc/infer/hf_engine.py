"""The HF engine: greedy answers from the engine's own continuous-batching loop (:mod:`.greedy`), everything else
(sampling, beams, penalties, models it cannot drive) from ``generate`` in static, length-sorted batches."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from transformers import GenerationConfig

from ..utils import UsageError
from .engine import Engine, Generation, ProgressCallback, SamplingSettings


class HFEngine(Engine):
    """Generate with a loaded ``model`` / ``tokenizer``.

    Greedy decoding (the default) runs :class:`~instructkgc.infer.greedy.GreedyLoop` with ``batch_size`` rows:
    continuous batching, shared-prefix reuse, (with ``constrained``) jump-forward decoding and lookup drafts, each
    of which ``continuous`` / ``prefix_reuse`` / ``jump_forward`` / ``lookup`` can turn off. Answers are the plain
    greedy answers.

    Otherwise (or with ``continuous=False``) prompts are sorted by length (longest first, so memory problems show
    up at once) and cut into batches of ``batch_size`` for ``generate``; each batch is left-padded, with the
    attention mask telling the model which positions are padding (position ids follow from it), so greedy answers
    equal one-prompt-at-a-time answers. Generation stops at any of ``stop_token_ids`` (the template's stop words
    plus eos).
    """

    def __init__(self, model, tokenizer, stop_token_ids: Sequence[int], settings: SamplingSettings,
                 batch_size: int = 16, constrained: bool = False, continuous: bool = True,
                 prefix_reuse: bool = True, jump_forward: bool = True, lookup: bool = True):
        if batch_size < 1:
            raise UsageError("--batch_size must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.stop_token_ids = list(dict.fromkeys(int(t) for t in stop_token_ids))
        if not self.stop_token_ids:
            raise UsageError("the tokenizer has no eos token and the template no stop words")
        self.settings = settings
        self.batch_size = batch_size
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.stop_token_ids[0])
        self.grammars = None
        if constrained:
            if settings.num_beams != 1:
                raise UsageError("--constrained_decoding works with --num_beams 1 only")
            from .constrained import GrammarCache

            vocab = model.get_output_embeddings().weight.shape[0]
            self.grammars = GrammarCache(tokenizer, vocab, self.stop_token_ids)
        self.config = self._generation_config()
        self.loop = None
        if continuous and self._plain_greedy():
            from .greedy import GreedyLoop

            self.loop = GreedyLoop(_forward_model(model), self.stop_token_ids, settings.max_new_tokens, batch_size,
                                   prefix_reuse=prefix_reuse, jump_forward=jump_forward, lookup=lookup)

    def _plain_greedy(self) -> bool:
        """Whether answers are plain greedy ones from a model the greedy loop can drive."""
        from .greedy import supports

        s = self.settings
        plain = (not s.do_sample and s.num_beams == 1 and s.repetition_penalty == 1.0 and not s.no_repeat_ngram_size
                 and not s.min_new_tokens and s.max_new_tokens >= 1)
        return plain and supports(_forward_model(self.model))

    def _generation_config(self) -> GenerationConfig:
        s = self.settings
        kwargs = dict(max_new_tokens=s.max_new_tokens, num_beams=s.num_beams, do_sample=s.do_sample,
                      repetition_penalty=s.repetition_penalty, no_repeat_ngram_size=s.no_repeat_ngram_size,
                      eos_token_id=self.stop_token_ids, pad_token_id=self.pad_token_id,
                      bos_token_id=self.tokenizer.bos_token_id)
        if s.min_new_tokens:
            kwargs["min_new_tokens"] = s.min_new_tokens
        if s.num_beams > 1:
            kwargs["length_penalty"] = s.length_penalty
        if s.do_sample:
            kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
        else:  # greedy: the model's own sampling defaults must not leak in
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return GenerationConfig(**kwargs)

    @torch.inference_mode()
    def generate(self, prompts, json_schemas=None, progress: Optional[ProgressCallback] = None):
        if json_schemas is not None and any(s is not None for s in json_schemas) and self.grammars is None:
            raise UsageError("JSON schemas given to an engine created without constrained=True")
        results: list[Optional[Generation]] = [None] * len(prompts)
        if self.loop is not None:
            grammars = [None] * len(prompts)
            if json_schemas is not None:
                from .constrained import RowGrammar

                grammars = [RowGrammar(self.grammars, self.grammars.matcher(s), self.settings.max_new_tokens)
                            if s is not None else None for s in json_schemas]

            def finished(i: int, tokens: list) -> None:
                results[i] = self._decode(tokens)
                if progress is not None:
                    progress(1, results[i].num_tokens)

            self.loop.run(prompts, grammars, finished)
            return results
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            schemas = [json_schemas[i] for i in rows] if json_schemas is not None else None
            batch = self._generate_batch([prompts[i] for i in rows], schemas)
            for i, gen in zip(rows, batch):
                results[i] = gen
            if progress is not None:
                progress(len(rows), sum(g.num_tokens for g in batch))
        return results

    def _generate_batch(self, prompts: list[list[int]], schemas) -> list[Generation]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p):] = 1
        processors = []
        if schemas is not None and any(s is not None for s in schemas):
            from .constrained import JsonSchemaProcessor

            processors.append(JsonSchemaProcessor(self.grammars, schemas, width, self.settings.max_new_tokens,
                                                  self.pad_token_id))
        device = self.model.device
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  generation_config=self.config, logits_processor=processors or None)
        return [self._decode(row) for row in out[:, width:].tolist()]

    def _decode(self, tokens: list[int]) -> Generation:
        stops = set(self.stop_token_ids)
        end = next((k for k, t in enumerate(tokens) if t in stops), None)
        kept = tokens if end is None else tokens[:end]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Generation(text=text, num_tokens=len(kept) + (end is not None), finished=end is not None)

    def close(self) -> None:
        self.model = self.loop = None


def _forward_model(model):
    """The module to call for logits: a LoRA ``PeftModel``'s base model (the adapters are injected into it)."""
    config = getattr(model, "active_peft_config", None)
    if config is not None and not config.is_prompt_learning and hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model
