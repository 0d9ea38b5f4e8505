"""Prompt templates: one data registry, the encoding rules of the original, the tokenizer fixes and stop ids.

Encoding rules (identical for training and inference):

* each template element is encoded **separately** with ``add_special_tokens=False``; ``{"token": X}`` is the
  single id of special token X; a string empty after substitution gives no ids;
* turn 0: ``bos + prefix + sep`` when the prefix gives ids, else ``bos``; bos only when the tokenizer adds
  one itself (see ``_bos_ids``);
* ``llama2*`` templates (:class:`Llama2Template`) glue the system block in front of the query string and
  have no sep;
* ``efficient_eos`` templates: ``encode_oneturn`` returns the response **without** eos; preprocessing appends
  one eos at the very end (``Template.final_eos_ids``). Other templates end the response with eos.
  In both cases ``response_ids + template.final_eos_ids(tokenizer)`` is the full label sequence.

CLI: ``python -m instructkgc.template --template NAME --tokenizer DIR --query Q [--response R] [--system S]``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Optional, Union

from .utils import UsageError, get_logger

logger = get_logger(__name__)

Element = Union[str, dict]

_LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)
_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                  "helpful, detailed, and polite answers to the user's questions.")
_LLAMA3_PREFIX = "<|start_header_id|>system<|end_header_id|>\n\n{{system}}<|eot_id|>"
_LLAMA3_PROMPT = ("<|start_header_id|>user<|end_header_id|>\n\n{{query}}<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n")
_LLAMA2_PREFIX = "<<SYS>>\n{{system}}\n<</SYS>>\n\n"


def T(token: str) -> dict:
    """A single special token element."""
    return {"token": token}


# name: (prefix, prompt, system, sep, stop_words, efficient_eos, replace_eos[, use_history])
_REGISTRY: dict[str, dict] = {
    "alpaca": dict(prefix=["{{system}}"], prompt=["### Instruction:\n{{query}}\n\n### Response:\n"],
                   system="Below is an instruction that describes a task. Write a response that appropriately "
                          "completes the request.", sep=["\n\n"]),
    "aquila": dict(prefix=["{{system}}"], prompt=["Human: {{query}}###Assistant:"],
                   system="A chat between a curious human and an artificial intelligence assistant. The assistant "
                          "gives helpful, detailed, and polite answers to the human's questions.",
                   sep=["###"], stop_words=["</s>"], efficient_eos=True),
    "baichuan": dict(prefix=["{{system}}"], prompt=[T("<reserved_102>"), "{{query}}", T("<reserved_103>")],
                     efficient_eos=True),
    "baichuan2": dict(prefix=["{{system}}"], prompt=[T("<reserved_106>"), "{{query}}", T("<reserved_107>")],
                      efficient_eos=True),
    "openba": dict(prefix=["{{system}}"], prompt=[T("<S>"), "{{query}}", T("<extra_id_0>")]),
    "belle": dict(prefix=["{{system}}"], prompt=["Human: {{query}}\n\nBelle: "], sep=["\n\n"]),
    "bluelm": dict(prefix=["{{system}}"], prompt=[T("[|Human|]:"), "{{query}}", T("[|AI|]:")]),
    "chatglm2": dict(prefix=[T("[gMASK]"), T("sop"), "{{system}}"],
                     prompt=["[Round {{idx}}]\n\n问：{{query}}\n\n答："], sep=["\n\n"], efficient_eos=True),
    "chatglm3": dict(prefix=[T("[gMASK]"), T("sop"), T("<|system|>"), "\n", "{{system}}"],
                     prompt=[T("<|user|>"), "\n", "{{query}}", T("<|assistant|>")],
                     system="You are ChatGLM3, a large language model trained by Zhipu.AI. Follow the user's "
                            "instructions carefully. Respond using markdown.",
                     stop_words=["<|user|>", "<|observation|>"], efficient_eos=True),
    "deepseek": dict(prefix=["{{system}}"], prompt=["### Instruction:\n{{query}}\n\n### Response:\n"],
                     system="You are an AI programming assistant, utilizing the Deepseek Coder model, developed by "
                            "Deepseek Company, and you only answer questions related to computer science. For "
                            "politically sensitive questions, security and privacy issues, and other non-computer "
                            "science questions, you will refuse to answer.",
                     sep=["\n", T("<|EOT|>"), "\n\n"], stop_words=["<|EOT|>"], efficient_eos=True),
    "default": dict(prefix=["{{system}}"], prompt=["Human: {{query}}\nAssistant:"], system=_VICUNA_SYSTEM,
                    sep=["\n"]),
    "falcon": dict(prefix=["{{system}}"], prompt=["User: {{query}}\nFalcon:"], sep=["\n"], efficient_eos=True),
    "intern": dict(prefix=["{{system}}"], prompt=["<|User|>:{{query}}", T("<eoh>"), "\n<|Bot|>:"],
                   sep=[T("<eoa>"), "\n"], stop_words=["<eoa>"], efficient_eos=True),
    "llama2": dict(prefix=[_LLAMA2_PREFIX], prompt=["[INST] {{query}} [/INST]"], system=_LLAMA2_SYSTEM),
    "llama2_zh": dict(prefix=[_LLAMA2_PREFIX], prompt=["[INST] {{query}} [/INST]"],
                      system="You are a helpful assistant. 你是一个乐于助人的助手。"),
    "llama3": dict(prefix=[_LLAMA3_PREFIX], prompt=[_LLAMA3_PROMPT], system="You are a helpful assistant.",
                   stop_words=["<|eot_id|>"], replace_eos=True),
    "llama3_zh": dict(prefix=[_LLAMA3_PREFIX], prompt=[_LLAMA3_PROMPT],
                      system="You are a helpful assistant. 你是一个乐于助人的助手。", stop_words=["<|eot_id|>"],
                      replace_eos=True),
    "mistral": dict(prefix=["{{system}}"], prompt=["[INST] {{query}} [/INST]"], sep=[" "]),
    "openchat": dict(prefix=["{{system}}"],
                     prompt=["GPT4 Correct User: {{query}}", T("<|end_of_turn|>"), "GPT4 Correct Assistant:"],
                     sep=[T("<|end_of_turn|>")], stop_words=["<|end_of_turn|>"], efficient_eos=True),
    "qwen": dict(prefix=[T("<|im_start|>"), "system\n{{system}}"],
                 prompt=[T("<|im_start|>"), "user\n{{query}}", T("<|im_end|>"), "\n", T("<|im_start|>"),
                         "assistant\n"],
                 system="You are a helpful assistant.", sep=[T("<|im_end|>"), "\n"], stop_words=["<|im_end|>"],
                 efficient_eos=True, replace_eos=True),
    "starchat": dict(prefix=[T("<|system|>"), "\n{{system}}"],
                     prompt=[T("<|user|>"), "\n{{query}}", T("<|end|>"), "\n", T("<|assistant|>")],
                     sep=[T("<|end|>"), "\n"], stop_words=["<|end|>"], efficient_eos=True),
    "vanilla": dict(prefix=[], prompt=["{{query}}"], use_history=False),
    "vicuna": dict(prefix=["{{system}}"], prompt=["USER: {{query}} ASSISTANT:"], system=_VICUNA_SYSTEM),
    "xverse": dict(prefix=["{{system}}"], prompt=["Human: {{query}}\n\nAssistant: "]),
    "yayi": dict(prefix=[T("<|System|>"), ":\n{{system}}"],
                 prompt=[T("<|Human|>"), ":\n{{query}}\n\n", T("<|YaYi|>"), ":"],
                 system=_LLAMA2_SYSTEM.replace("helpful, respectful and honest assistant.",
                                               "helpful, respectful and honest assistant named YaYi developed by "
                                               "Beijing Wenge Technology Co.,Ltd.", 1)
                 .replace("while being safe. ", "while being safe.  ", 1),
                 sep=["\n\n"], stop_words=["<|End|>"]),
    "zephyr": dict(prefix=[T("<|system|>"), "\n{{system}}", T("</s>")],
                   prompt=[T("<|user|>"), "\n{{query}}", T("</s>"), T("<|assistant|>")],
                   system="You are a friendly chatbot who always responds in the style of a pirate"),
    "ziya": dict(prefix=["{{system}}"], prompt=[T("<human>"), ":{{query}}\n", T("<bot>"), ":"], sep=["\n"]),
}


def template_names() -> list[str]:
    return sorted(_REGISTRY)


def _bos_ids(tokenizer) -> list[int]:
    """``[bos]`` when the tokenizer adds bos itself, else ``[]``.

    The original tests ``getattr(tokenizer, "add_bos_token", True)``; transformers 5 tokenizers loaded from
    tokenizer.json report ``add_bos_token=False`` even when their post-processor adds bos (Llama-2), so we
    look at what encoding with special tokens actually does, and use the attribute only when that fails.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    try:
        ids = tokenizer.encode("a", add_special_tokens=True)
    except Exception:  # custom tokenizers with unusual encode signatures
        return [bos] if getattr(tokenizer, "add_bos_token", True) else []
    return [bos] if ids and ids[0] == bos else []


def _encode_text(tokenizer, text: str) -> list[int]:
    if type(getattr(tokenizer, "tokenizer", None)).__name__ == "Encoding":  # tiktoken-based (Qwen-1)
        return tokenizer.encode(text, allowed_special="all")
    return tokenizer.encode(text, add_special_tokens=False)


@dataclass
class Template:
    """A prompt template (see module docstring for the encoding rules)."""

    name: str
    prefix: list = field(default_factory=list)
    prompt: list = field(default_factory=list)
    system: str = ""
    sep: list = field(default_factory=list)
    stop_words: list = field(default_factory=list)
    use_history: bool = True
    efficient_eos: bool = False
    replace_eos: bool = False

    def special_tokens(self) -> list[str]:
        """The ``{"token": X}`` elements the template needs as single ids."""
        return [e["token"] for e in self.prefix + self.prompt + self.sep if isinstance(e, dict)]

    def _ids(self, tokenizer, context, system=None, query=None, idx=None) -> list[int]:
        ids: list[int] = []
        for elem in context:
            if isinstance(elem, str):
                if system is not None:
                    elem = elem.replace("{{system}}", system, 1)
                if query is not None:
                    elem = elem.replace("{{query}}", query, 1)
                if idx is not None:
                    elem = elem.replace("{{idx}}", idx, 1)
                if elem:
                    ids += _encode_text(tokenizer, elem)
            else:
                token_id = tokenizer.convert_tokens_to_ids(elem["token"])
                if token_id is None or (token_id == tokenizer.unk_token_id and elem["token"] != tokenizer.unk_token):
                    raise ValueError(f"template {self.name!r} needs special token {elem['token']!r}, which the "
                                     "tokenizer lacks (call Template.fix_tokenizer first)")
                ids.append(token_id)
        return ids

    def _eos_ids(self, tokenizer) -> list[int]:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token")
        return [] if self.efficient_eos else [tokenizer.eos_token_id]

    def final_eos_ids(self, tokenizer) -> list[int]:
        """The single eos preprocessing appends after the last response with ``efficient_eos``."""
        return [tokenizer.eos_token_id] if self.efficient_eos else []

    def encode_multiturn(self, tokenizer, history: list[tuple[str, str]], system: Optional[str] = None):
        """``[(prompt_ids, response_ids), ...]`` per turn, following the rules of the module docstring."""
        system = system or self.system
        bos = _bos_ids(tokenizer)
        eos = self._eos_ids(tokenizer)
        pairs = []
        sep = self._ids(tokenizer, self.sep)
        for turn, (query, response) in enumerate(history):
            if turn == 0:
                prefix = self._ids(tokenizer, self.prefix, system=system)
                prefix = bos + prefix + sep if prefix else bos
            else:
                prefix = sep + bos
            prompt = self._ids(tokenizer, self.prompt, query=query, idx=str(turn + 1))
            pairs.append((prefix + prompt, self._ids(tokenizer, [response]) + eos))
        return pairs

    def encode_oneturn(self, tokenizer, query: str, response: str = "", system: Optional[str] = None):
        """``(prompt_ids, response_ids)`` of one turn; with ``efficient_eos`` the response has no eos."""
        return self.encode_multiturn(tokenizer, [(query, response)], system)[0]

    def fix_tokenizer(self, tokenizer) -> "Template":
        """Fix ``tokenizer`` for this template, as the original did; returns ``self``.

        ``replace_eos`` makes ``stop_words[0]`` the eos; a missing eos becomes ``<|endoftext|>``; a missing pad
        becomes eos; the other stop words become additional special tokens. Deviation: special-token elements
        of the template that the tokenizer lacks are added too (the original silently encoded them as unk); the
        loader resizes the embeddings when the vocabulary grew.
        """
        stop_words = list(self.stop_words)
        if self.replace_eos:
            if not stop_words:
                raise ValueError("stop words are required to replace the EOS token")
            tokenizer.add_special_tokens({"eos_token": stop_words[0]})
            stop_words = stop_words[1:]
        if tokenizer.eos_token_id is None:
            tokenizer.add_special_tokens({"eos_token": "<|endoftext|>"})
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        missing = [t for t in dict.fromkeys(stop_words + self.special_tokens()) if not _has_token(tokenizer, t)]
        if stop_words or missing:
            tokenizer.add_special_tokens({"additional_special_tokens": list(dict.fromkeys(stop_words + missing))},
                                         replace_extra_special_tokens=False)
        if missing:
            logger.warning("template %s: added special tokens missing from the tokenizer: %s", self.name, missing)
        return self

    def stop_ids(self, tokenizer) -> list[int]:
        """eos plus the ids of the template's stop words, for generation."""
        ids = [tokenizer.eos_token_id]
        for word in self.stop_words:
            if _has_token(tokenizer, word):
                ids.append(tokenizer.convert_tokens_to_ids(word))
        return list(dict.fromkeys(i for i in ids if i is not None))


class Llama2Template(Template):
    """``llama2*``: the system block is glued in front of the first query, inside ``[INST] ... [/INST]``."""

    def encode_multiturn(self, tokenizer, history, system=None):
        system = system or self.system
        bos, eos = _bos_ids(tokenizer), self._eos_ids(tokenizer)
        pairs = []
        for turn, (query, response) in enumerate(history):
            if turn == 0:
                query = self.prefix[0].replace("{{system}}", system) + query
            pairs.append((bos + self._ids(tokenizer, self.prompt, query=query),
                          self._ids(tokenizer, [response]) + eos))
        return pairs


class AutoTemplate(Template):
    """``--template auto``: the tokenizer's own ``chat_template`` (system/user/assistant roles)."""

    def encode_multiturn(self, tokenizer, history, system=None):
        if not getattr(tokenizer, "chat_template", None):
            raise UsageError("--template auto: the tokenizer has no chat_template (a base model?); pass a template "
                             "name, e.g. --template alpaca")
        messages = [{"role": "system", "content": system}] if system else []
        pairs, done = [], []
        for query, response in history:
            messages = messages + [{"role": "user", "content": query}]
            full_prompt = self._render(tokenizer, messages, add_generation_prompt=True)
            prompt_ids = full_prompt[len(done):]
            messages = messages + [{"role": "assistant", "content": response}]
            full = self._render(tokenizer, messages, add_generation_prompt=False)
            if full[:len(full_prompt)] == full_prompt:
                response_ids = full[len(full_prompt):]
            else:  # template re-renders earlier turns: fall back to encoding the response plus eos
                response_ids = _encode_text(tokenizer, response) + [tokenizer.eos_token_id]
            pairs.append((prompt_ids, response_ids))
            done = full_prompt + response_ids
        return pairs

    @staticmethod
    def _render(tokenizer, messages, add_generation_prompt) -> list[int]:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return tokenizer.encode(text, add_special_tokens=False)


_CLASSES = {"llama2": Llama2Template, "llama2_zh": Llama2Template}


def get_template(name: str) -> Template:
    """The registered template ``name`` (or ``auto``); the one check of a template name (UsageError)."""
    if name == "auto":
        return AutoTemplate(name="auto")
    if name not in _REGISTRY:
        raise UsageError(f"unknown --template {name!r}; choose one of: auto, " + ", ".join(template_names()))
    spec = {k: (list(v) if isinstance(v, list) else v) for k, v in _REGISTRY[name].items()}
    return _CLASSES.get(name, Template)(name=name, **spec)


def _has_token(tokenizer, token: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id is not None and (token_id != tokenizer.unk_token_id or token == tokenizer.unk_token)


def get_template_and_fix_tokenizer(name: str, tokenizer) -> Template:
    """``get_template(name).fix_tokenizer(tokenizer)``."""
    return get_template(name).fix_tokenizer(tokenizer)


def stop_token_ids(template: Template, tokenizer) -> list[int]:
    """``template.stop_ids(tokenizer)``."""
    return template.stop_ids(tokenizer)


def record_query(record: dict) -> str:
    """The query of an instruction record: ``instruction`` plus ``"\\n" + input`` when input is truthy."""
    query = record["instruction"]
    if record.get("input"):
        query = query + "\n" + record["input"]
    return query


def build_prompt_ids(template: Template, tokenizer, record: dict, max_prompt_len: int):
    """Prompt ids for INFERENCE from an instruction record, at most ``max_prompt_len`` of them (the prompt
    budget: ``--cutoff_len`` of LoRA inference, ``--max_src_len`` of P-Tuning); returns ``(ids, truncated)``.

    The ids equal the prompt part training used (see :func:`fit_prompt`).
    """
    return fit_prompt(template, tokenizer, record_query(record), record.get("system") or None, max_prompt_len)


def fit_prompt(template: Template, tokenizer, query: str, system: Optional[str], budget: int):
    """Prompt ids of ``query`` in at most ``budget`` tokens; returns ``(ids, truncated)``.

    When the prompt is longer the **left part of the query** is cut (the template's head and the assistant
    marker at the end are kept); the original cut the tail and lost the assistant marker.
    """
    prompt, _ = template.encode_oneturn(tokenizer, query, "", system)
    if len(prompt) <= budget:
        return prompt, False
    if budget <= 0:
        return [], True
    # Smallest character offset whose query suffix fits (re-encoded as training would encode it).
    lo, hi = 0, len(query)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(template.encode_oneturn(tokenizer, query[mid:], "", system)[0]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    ids, _ = template.encode_oneturn(tokenizer, query[lo:], "", system)
    if len(ids) > budget:  # even the bare template does not fit: keep its tail, marker included
        ids = ids[-budget:]
    return ids, True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Show the token ids a model is fed for one query/response.")
    parser.add_argument("--template", required=True)
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder or model path")
    parser.add_argument("--query", required=True)
    parser.add_argument("--response", default=None)
    parser.add_argument("--system", default=None)
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="run Python code shipped in the tokenizer folder (auto_map); off unless given")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from ie2instruction.io import cli_errors

    from .loader import load_error

    with cli_errors():
        template = get_template(args.template)
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, trust_remote_code=args.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise load_error(args.tokenizer, "a tokenizer", exc, args.trust_remote_code, "--tokenizer") from None
        template.fix_tokenizer(tokenizer)
        prompt, response = template.encode_oneturn(tokenizer, args.query, args.response or "", args.system)
    if args.response is not None:
        response = response + template.final_eos_ids(tokenizer)
    else:
        response = []
    print(json.dumps({
        "prompt_ids": prompt, "response_ids": response,
        "prompt_text": tokenizer.decode(prompt), "response_text": tokenizer.decode(response),
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()
