"""Build a tiny random-initialised causal LM plus a tokenizer trained on the bundled data.

Used by the tests and for smoke runs: ``python -m instructkgc.tiny_model --out DIR [--arch llama|qwen2]``.
The result loads offline with ``AutoTokenizer`` / ``AutoModelForCausalLM``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parents[2]

# Used when the repository's data/ folder is missing (installed package) so the tool still works.
_FALLBACK_TEXT = [
    "You are an expert in named entity recognition. Please extract entities that match the schema definition "
    "from the input. Return an empty list if the entity type does not exist. Please respond in the format of a "
    "JSON string.",
    "你是专门进行实体抽取的专家。请从input中抽取出符合schema定义的实体，不存在的实体类型返回空列表。请按照JSON字符串的格式回答。",
    "你是专门进行关系抽取的专家。请从input中抽取出符合schema定义的关系三元组，不存在的关系返回空列表。",
    "你是专门进行事件提取的专家。请从input中抽取出符合schema定义的事件，不存在的事件返回空列表，不存在的论元返回NAN。",
    '{"instruction": "", "schema": ["人物", "地理位置", "组织机构"], "input": "2000年8月，江泽民主席在北京会见了来访的美国客人。"}',
    '{"person": ["John Smith"], "organization": ["Google"], "location": ["New York", "Paris"]}',
    "The quick brown fox jumps over the lazy dog. Barack Obama was born in Hawaii and worked in Washington.",
]


def _json_strings(obj) -> Iterator[str]:
    """Every string (keys too) inside a JSON value."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _json_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _json_strings(v)


def corpus(root: Path = REPO_ROOT, max_bytes_per_file: int = 2_000_000) -> list[str]:
    """Texts for tokenizer training: all data/**/*.json strings (JSON or JSONL) and the task instructions.

    Deliberately not source code: editing a module must not change the test model.
    """
    from ie2instruction.tasks import TASKS

    texts: list[str] = []
    for path in sorted((root / "data").glob("**/*.json")):
        raw = path.read_text(encoding="utf-8", errors="replace")[:max_bytes_per_file]
        try:
            values = [json.loads(raw)]
        except json.JSONDecodeError:
            values = []
            for line in raw.splitlines():
                try:
                    values.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        for value in values:
            texts.extend(_json_strings(value))
            texts.append(json.dumps(value, ensure_ascii=False)[:5000])
    for task in TASKS.values():
        texts.extend(task.sentences.values())
    return texts + _FALLBACK_TEXT


def _train_tokenizer(arch: str, texts: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if arch == "llama":
        specials = ["<unk>", "<s>", "</s>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        alphabet: list[str] = []
    else:
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False,
        min_frequency=2,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return state["vocab"], merges


def build_tiny_model(out_dir, arch: str = "llama", vocab_size: int = 6000, seed: int = 0,
                     hidden_size: int = 64, num_layers: int = 2, data_root: Path | None = None) -> str:
    """Train a tokenizer on the bundled data and save it with a random-initialised tiny model to ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaTokenizer, Qwen2Config, Qwen2Tokenizer

    if arch not in ("llama", "qwen2"):
        raise ValueError(f"unknown arch {arch!r} (choose llama or qwen2)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = _train_tokenizer(arch, corpus(data_root or REPO_ROOT), vocab_size)
    if arch == "llama":  # SentencePiece-style byte fallback: unseen characters become <0xXX> byte tokens
        vocab = dict(vocab)
        for byte in range(256):
            vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
        tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, legacy=False)
        config_cls, extra = LlamaConfig, {}
    else:
        tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        config_cls, extra = Qwen2Config, {"use_sliding_window": False}
    tokenizer.model_max_length = 4096
    config = config_cls(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **extra,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--arch", default="llama", choices=["llama", "qwen2"])
    parser.add_argument("--vocab_size", type=int, default=6000)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_model(args.out, args.arch, args.vocab_size, args.seed, args.hidden_size, args.num_layers))


if __name__ == "__main__":
    main()
