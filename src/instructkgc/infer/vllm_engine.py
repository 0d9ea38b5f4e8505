"""vLLM backend (optional extra ``instructkgc[vllm]``, imported lazily): continuous batching, prefix caching,
LoRA adapters through ``LoRARequest``, the same answer grammar as the HF engine, tensor parallelism.

Everything vLLM is given is built by the functions here without a GPU (``llm_kwargs``, ``sampling_kwargs`` /
``sampling_params``, ``lora_request``), so the tests check it against the real vLLM classes on the CPU; only
:func:`load_vllm` constructs ``vllm.LLM``. ``--ray --backend vllm`` gives Ray's vLLM processor the same
arguments, as plain data (``instructkgc.distributed.VLLMInferJob``), and turns its token ids into answers with
the same :func:`generation`. What vLLM cannot do the way the HF engine does is refused before loading
(:func:`check_vllm`). Where the two engines meet:

* prompts: the same token ids (the template's, cut to ``--cutoff_len``), given as ``prompt_token_ids``;
* stops: the same stop ids. vLLM also stops at the model's own eos (its tokenizer's and generation_config's),
  which the HF engine stops at when the template lists it (as the templates made for a model do); answers
  are decoded here, with the same tokenizer, from vLLM's token ids;
* grammar: the EBNF of the same JSON Schema (:func:`~instructkgc.infer.constrained.schema_ebnf`);
* the end of the budget: vLLM has no closing policy, so an answer that ``max_new_tokens`` cut is closed
  afterwards (:func:`close_cut_answer`): cut back to the longest prefix after which the closing text still
  fits, then the closing text. The HF engine forces the first closing token at that same point and lets the
  model go on; both answers are valid JSON within the budget, equal up to that point;
* ``--no_repeat_ngram_size``: the same rule, as a vLLM logits processor (``vllm_ngram.py``);
* dtype without ``--bf16/--fp16``: the same default as the HF engine (:func:`~instructkgc.loader.infer_dtype`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..utils import UsageError
from .engine import Engine, Generation, ProgressCallback, SamplingSettings

EXTRA = "pip install 'instructkgc[vllm]'"
NGRAM_PROCESSOR = "instructkgc.infer.vllm_ngram:NoRepeatNGram"
MERGE = "merge it first with src/export_model.py"


def require_vllm():
    """Import vllm or raise a one-line UsageError naming the extra."""
    try:
        import vllm
    except ImportError:
        raise UsageError(f"--backend vllm needs vLLM (a CUDA machine): {EXTRA}") from None
    return vllm


@dataclass
class VLLMModel:
    """What the vLLM engine generates with: the ``vllm.LLM``, the LoRA request (or None) and the model's
    vocabulary size (for the grammar's token table)."""

    llm: Any
    lora: Any
    vocab_size: int


def model_source(model_args, finetuning_args) -> tuple[str, Optional[str]]:
    """``(model folder, LoRA adapter folder or None)``: a fully fine-tuned checkpoint is the model itself."""
    model_path, adapters = model_args.model_name_or_path, list(model_args.checkpoint_dir or [])
    full = finetuning_args is not None and finetuning_args.finetuning_type != "lora"
    if adapters and (full or not (Path(adapters[0]) / "adapter_config.json").is_file()):
        return adapters[0], None
    if len(adapters) > 1:
        raise UsageError(f"--backend vllm serves one LoRA adapter, got {len(adapters)}; {MERGE}")
    return model_path, adapters[0] if adapters else None


def _adapter_full_modules(adapter: str) -> list[str]:
    """Modules an adapter saves whole (``modules_to_save``, resized embeddings): vLLM cannot load them."""
    config = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    names = set(config.get("modules_to_save") or [])
    weights = Path(adapter) / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="np") as f:
            names.update(k.split(".")[-2] for k in f.keys() if "lora_" not in k and k.endswith(".weight"))
    return sorted(names)


def check_vllm(model_args, settings: SamplingSettings, tokenizer, vocab_size: int, adapter: Optional[str]):
    """Refuse, with one line saying what to do, what vLLM cannot do as the HF engine does."""
    if model_args.bits in (4, 8):
        raise UsageError(f"--backend vllm cannot load a bitsandbytes --bits {model_args.bits} model (vLLM has "
                         "no bitsandbytes quantization); drop --bits: vLLM serves the LoRA adapter on the 16-bit "
                         "base model (or use --backend hf)")
    if settings.num_beams != 1:
        raise UsageError("--backend vllm: --num_beams > 1 is not supported (use --backend hf)")
    if len(tokenizer) > vocab_size:
        raise UsageError(f"--backend vllm: the template adds tokens the model lacks ({len(tokenizer)} > "
                         f"{vocab_size}), which vLLM cannot serve; {MERGE} (the merged folder has them) or use "
                         "--backend hf")
    if adapter is not None:
        extra = _adapter_full_modules(adapter)
        if extra:
            raise UsageError(f"{adapter}: vLLM cannot serve an adapter that saves whole modules "
                             f"({', '.join(extra)}); {MERGE}")


def _lora_rank(adapter: str) -> int:
    """vLLM's ``max_lora_rank``: the adapter's rank rounded up to a power of two (at least 8)."""
    config = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    return max(8, 1 << (int(config.get("r", 8)) - 1).bit_length())


def llm_kwargs(model_path: str, adapter: Optional[str], model_args, infer_args, settings: SamplingSettings,
               dtype: str, max_model_len: int) -> dict:
    """Keyword arguments of ``vllm.LLM``. Structured outputs use the xgrammar backend: the grammars sent are
    xgrammar EBNF (:func:`~instructkgc.infer.grammar.answer_grammar`), which vLLM's other backends do not read."""
    from vllm.config import StructuredOutputsConfig

    kwargs = dict(model=model_path, tokenizer=model_path, trust_remote_code=model_args.trust_remote_code,
                  revision=model_args.model_revision, dtype=dtype, generation_config="vllm",
                  structured_outputs_config=StructuredOutputsConfig(backend="xgrammar"),
                  enable_prefix_caching=True, tensor_parallel_size=infer_args.tensor_parallel_size,
                  gpu_memory_utilization=infer_args.gpu_memory_utilization, max_model_len=max_model_len)
    if adapter is not None:
        kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=_lora_rank(adapter))
    if settings.no_repeat_ngram_size > 0:
        kwargs["logits_processors"] = [NGRAM_PROCESSOR]
    return kwargs


def sampling_kwargs(settings: SamplingSettings, stop_token_ids: Sequence[int],
                    grammar: Optional[str] = None) -> dict:
    """Keyword arguments of ``vllm.SamplingParams`` for one prompt, as plain data (``grammar``: EBNF text of its
    answer, or None; then ``structured_outputs`` holds the keyword arguments of ``StructuredOutputsParams``)."""
    kwargs = dict(max_tokens=settings.max_new_tokens, stop_token_ids=list(stop_token_ids),
                  repetition_penalty=settings.repetition_penalty, detokenize=False)
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p,
                      top_k=settings.top_k if settings.top_k > 0 else 0)
    else:
        kwargs.update(temperature=0.0)  # greedy (the original's "greedy" sampled at 0.2)
    if settings.min_new_tokens:
        kwargs["min_tokens"] = settings.min_new_tokens
    if settings.no_repeat_ngram_size > 0:
        kwargs["extra_args"] = {"no_repeat_ngram_size": settings.no_repeat_ngram_size}
    if grammar is not None:
        kwargs["structured_outputs"] = {"grammar": grammar}
    return kwargs


def sampling_params(settings: SamplingSettings, stop_token_ids: Sequence[int], grammar: Optional[str] = None):
    """``vllm.SamplingParams`` of one prompt (``grammar``: EBNF text of its answer, or None), built from
    :func:`sampling_kwargs` the way Ray's vLLM stage builds it from a row's ``sampling_params``."""
    from vllm import SamplingParams

    kwargs = sampling_kwargs(settings, stop_token_ids, grammar)
    if "structured_outputs" in kwargs:
        from vllm.sampling_params import StructuredOutputsParams

        kwargs["structured_outputs"] = StructuredOutputsParams(**kwargs["structured_outputs"])
    return SamplingParams(**kwargs)


def lora_request(adapter: str):
    from vllm.lora.request import LoRARequest

    return LoRARequest("adapter", 1, str(Path(adapter).resolve()))


def prepare_vllm(model_args, finetuning_args, settings: SamplingSettings, tokenizer):
    """``(model folder, LoRA adapter or None, vocabulary size, dtype name)`` of a request, after
    :func:`check_vllm` (reads the model's config, no weights)."""
    from transformers import AutoConfig

    from ..loader import infer_dtype

    model_path, adapter = model_source(model_args, finetuning_args)
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=model_args.trust_remote_code,
                                        revision=model_args.model_revision)
    check_vllm(model_args, settings, tokenizer, config.vocab_size, adapter)
    dtype = str(infer_dtype(config, model_args.compute_dtype, cuda=True)).replace("torch.", "")
    return model_path, adapter, config.vocab_size, dtype


def load_vllm(model_args, finetuning_args, infer_args, settings: SamplingSettings, tokenizer,
              max_model_len: int) -> VLLMModel:
    """Check the request, then construct ``vllm.LLM`` (the one place that needs a GPU)."""
    vllm = require_vllm()
    model_path, adapter, vocab_size, dtype = prepare_vllm(model_args, finetuning_args, settings, tokenizer)
    llm = vllm.LLM(**llm_kwargs(model_path, adapter, model_args, infer_args, settings, dtype, max_model_len))
    return VLLMModel(llm=llm, lora=lora_request(adapter) if adapter else None, vocab_size=vocab_size)


def close_cut_answer(cache, grammar, tokens: list[int], budget: int) -> Optional[list[int]]:
    """A valid answer within ``budget`` tokens (stop token included) from ``tokens``, which the budget cut:
    the longest prefix after which the closing text still fits, the closing text and a stop token.
    None when no prefix can be closed."""
    matcher = cache.xgr.GrammarMatcher(grammar, max_rollback_tokens=len(tokens) + 1)
    kept = 0
    for t in tokens:
        if not matcher.accept_token(t):
            break
        kept += 1
    while kept >= 0:
        room = budget - kept
        text = cache.closing_text(matcher, room) if room > 0 else None
        closing = None if text is None else cache.spell(matcher, text, room - 1)
        if closing is not None and kept + len(closing) + 1 <= budget:
            return list(tokens[:kept]) + closing + [cache.stop_token_ids[0]]
        if kept:
            matcher.rollback(1)
        kept -= 1
    return None


def generation(tokenizer, grammars, max_new_tokens: int, tokens: list[int], stopped: bool,
               schema: Optional[dict]) -> Generation:
    """The answer to one prompt from ``tokens`` as vLLM returns them without detokenizing (ending with the stop
    token when ``stopped``): a cut answer with a ``schema`` is closed (:func:`close_cut_answer`, ``grammars``:
    the :class:`~instructkgc.infer.constrained.GrammarCache`), then the stop token dropped and the rest decoded."""
    if not stopped and schema is not None:
        closed = close_cut_answer(grammars, grammars.grammar(schema), tokens, max_new_tokens)
        if closed is not None:
            tokens, stopped = closed, True
    kept = tokens[:-1] if stopped and tokens else tokens
    text = tokenizer.decode(kept, skip_special_tokens=True)
    return Generation(text=text, num_tokens=len(tokens), finished=stopped)


class VLLMEngine(Engine):
    """Generate with ``vllm.LLM`` from token ids (the template's prompt ids, exactly as the HF engine)."""

    whole_file = True  # vLLM schedules best with every prompt in one call

    def __init__(self, model: VLLMModel, tokenizer, stop_token_ids: Sequence[int], settings: SamplingSettings,
                 batch_size: int = 16, constrained: bool = False):
        del batch_size  # vLLM batches by itself (continuous batching)
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.stop_token_ids = list(dict.fromkeys(int(t) for t in stop_token_ids))
        self.grammars = None
        if constrained:
            from .constrained import GrammarCache

            self.grammars = GrammarCache(tokenizer, model.vocab_size, self.stop_token_ids)

    def generate(self, prompts, json_schemas=None, progress: Optional[ProgressCallback] = None):
        from .constrained import schema_ebnf

        if json_schemas is not None and any(s is not None for s in json_schemas) and self.grammars is None:
            raise UsageError("JSON schemas given to an engine created without constrained=True")
        schemas = list(json_schemas) if json_schemas is not None else [None] * len(prompts)
        params, keys = {}, []  # one SamplingParams per distinct schema
        for schema in schemas:
            key = None if schema is None else json.dumps(schema, ensure_ascii=False)
            if key not in params:
                grammar = None if schema is None else schema_ebnf(schema)
                params[key] = sampling_params(self.settings, self.stop_token_ids, grammar)
            keys.append(key)
        outputs = self.model.llm.generate([{"prompt_token_ids": list(p)} for p in prompts],
                                          [params[k] for k in keys], lora_request=self.model.lora, use_tqdm=False)
        results = []
        for out, schema in zip(outputs, schemas):
            best = out.outputs[0]
            results.append(self._result(list(best.token_ids), best.finish_reason == "stop", schema))
        if progress is not None:
            progress(len(results), sum(g.num_tokens for g in results))
        return results

    def _result(self, tokens: list[int], stopped: bool, schema: Optional[dict]) -> Generation:
        return generation(self.tokenizer, self.grammars, self.settings.max_new_tokens, tokens, stopped, schema)

    def close(self) -> None:
        self.model = None
