"""vLLM backend (optional extra ``instructkgc[vllm]``, imported lazily): continuous batching, prefix caching,
LoRA adapters through ``LoRARequest``, structured outputs for ``--constrained_decoding``, tensor parallelism."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from ..utils import UsageError
from .engine import Engine, Generation, ProgressCallback, SamplingSettings

EXTRA = "pip install 'instructkgc[vllm]'"


def require_vllm():
    """Import vllm or raise a one-line UsageError naming the extra."""
    try:
        import vllm
    except ImportError:
        raise UsageError(f"--backend vllm needs vLLM (a CUDA machine): {EXTRA}") from None
    return vllm


def _structured(schema: dict) -> dict:
    """SamplingParams keyword for a JSON Schema: ``structured_outputs`` (vLLM >= 0.10.2) or the older
    ``guided_decoding``."""
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(json=schema)}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}


class VLLMEngine(Engine):
    """Generate with ``vllm.LLM`` from token ids (the template's prompt ids, exactly as the HF engine)."""

    def __init__(self, model_args, tokenizer, stop_token_ids: Sequence[int], settings: SamplingSettings,
                 batch_size: int = 16, constrained: bool = False, finetuning_args=None,
                 tensor_parallel_size: int = 1, max_model_len: Optional[int] = None, **_ignored):
        vllm = require_vllm()
        from vllm.lora.request import LoRARequest

        if settings.num_beams != 1:
            raise UsageError("--backend vllm: --num_beams > 1 is not supported (use the hf backend)")
        model_path, adapters = model_args.model_name_or_path, list(model_args.checkpoint_dir or [])
        full = finetuning_args is not None and finetuning_args.finetuning_type != "lora"
        if adapters and (full or not (Path(adapters[0]) / "adapter_config.json").is_file()):
            model_path, adapters = adapters[0], []  # a fully fine-tuned checkpoint is the model itself
        if len(adapters) > 1:
            raise UsageError("--backend vllm serves one LoRA adapter; merge them first with src/export_model.py")
        lora_rank = 16
        if adapters:
            config = json.loads((Path(adapters[0]) / "adapter_config.json").read_text(encoding="utf-8"))
            lora_rank = int(config.get("r", 16))
            if config.get("modules_to_save"):
                raise UsageError(f"{adapters[0]}: vLLM cannot serve LoRA modules_to_save "
                                 f"{config['modules_to_save']}; merge it with src/export_model.py")
        dtype = {None: "auto"}.get(model_args.compute_dtype, str(model_args.compute_dtype).replace("torch.", ""))
        kwargs = dict(model=model_path, tokenizer=model_path, trust_remote_code=model_args.trust_remote_code,
                      dtype=dtype, enable_prefix_caching=True, tensor_parallel_size=tensor_parallel_size,
                      max_num_seqs=max(batch_size, 1) * 16)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if model_args.bits == 4:
            kwargs["quantization"] = "bitsandbytes"
        if adapters:
            kwargs.update(enable_lora=True, max_lora_rank=max(8, 1 << (lora_rank - 1).bit_length()))
        self.llm = vllm.LLM(**kwargs)
        self.lora = LoRARequest("adapter", 1, str(Path(adapters[0]).resolve())) if adapters else None
        self.vllm = vllm
        self.settings = settings
        self.stop_token_ids = list(dict.fromkeys(int(t) for t in stop_token_ids))
        self.constrained = constrained

    def _params(self, schema: Optional[dict]):
        s = self.settings
        kwargs = dict(max_tokens=s.max_new_tokens, stop_token_ids=self.stop_token_ids,
                      repetition_penalty=s.repetition_penalty, skip_special_tokens=True)
        if s.do_sample:
            kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k if s.top_k > 0 else -1)
        else:
            kwargs.update(temperature=0.0)  # greedy (the original's "greedy" sampled at 0.2)
        if s.min_new_tokens:
            kwargs["min_tokens"] = s.min_new_tokens
        if schema is not None:
            kwargs.update(_structured(schema))
        return self.vllm.SamplingParams(**kwargs)

    def generate(self, prompts, json_schemas=None, progress: Optional[ProgressCallback] = None):
        if json_schemas is not None and any(s is not None for s in json_schemas) and not self.constrained:
            raise UsageError("JSON schemas given to an engine created without constrained=True")
        schemas = list(json_schemas) if json_schemas is not None else [None] * len(prompts)
        params = [self._params(s) for s in schemas]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params,
                                    lora_request=self.lora, use_tqdm=False)
        results = []
        for out in outputs:
            best = out.outputs[0]
            results.append(Generation(text=best.text, num_tokens=len(best.token_ids),
                                      finished=best.finish_reason == "stop"))
        if progress is not None:
            progress(len(results), sum(g.num_tokens for g in results))
        return results

    def close(self) -> None:
        self.llm = None
