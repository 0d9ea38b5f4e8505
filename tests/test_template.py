"""Template conformance: ids equal the reference layout written out here, independently of the code."""
import json
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from instructkgc.template import (build_prompt_ids, get_template, get_template_and_fix_tokenizer,
                                  stop_token_ids, template_names)

Q = '{"instruction": "抽取实体", "schema": ["人物"], "input": "张三在北京。"} extract'
A = '{"人物": ["张三"]}'

LLAMA2_SYS = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not "
    "make any sense, or is not factually coherent, explain why instead of answering something not correct. If you "
    "don't know the answer to a question, please don't share false information.")
YAYI_SYS = (
    "You are a helpful, respectful and honest assistant named YaYi developed by Beijing Wenge Technology Co.,Ltd. "
    "Always answer as helpfully as possible, while being safe.  Your answers should not include any harmful, "
    "unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are "
    "socially unbiased and positive in nature.\n\nIf a question does not make any sense, or is not factually "
    "coherent, explain why instead of answering something not correct. If you don't know the answer to a "
    "question, please don't share false information.")
VICUNA_SYS = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the user's questions.")
ZH_SYS = "You are a helpful assistant. 你是一个乐于助人的助手。"
L3H = "<|start_header_id|>{}<|end_header_id|>\n\n"

# Expected single-turn layouts of the original templates. "B" = bos (if the tokenizer adds one), ("t", X) = special token X,
# plain strings are encoded one by one. Value: (prompt layout, eos token or None (tokenizer eos), efficient_eos).
LAYOUTS = {
    "alpaca": (["B", "Below is an instruction that describes a task. Write a response that appropriately completes "
                     "the request.", "\n\n", f"### Instruction:\n{Q}\n\n### Response:\n"], None, False),
    "aquila": (["B", "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                     "helpful, detailed, and polite answers to the human's questions.", "###",
                f"Human: {Q}###Assistant:"], None, True),
    "baichuan": (["B", ("t", "<reserved_102>"), Q, ("t", "<reserved_103>")], None, True),
    "baichuan2": (["B", ("t", "<reserved_106>"), Q, ("t", "<reserved_107>")], None, True),
    "openba": (["B", ("t", "<S>"), Q, ("t", "<extra_id_0>")], None, False),
    "belle": (["B", f"Human: {Q}\n\nBelle: "], None, False),
    "bluelm": (["B", ("t", "[|Human|]:"), Q, ("t", "[|AI|]:")], None, False),
    "chatglm2": (["B", ("t", "[gMASK]"), ("t", "sop"), "\n\n", f"[Round 1]\n\n问：{Q}\n\n答："], None, True),
    "chatglm3": (["B", ("t", "[gMASK]"), ("t", "sop"), ("t", "<|system|>"), "\n",
                  "You are ChatGLM3, a large language model trained by Zhipu.AI. Follow the user's instructions "
                  "carefully. Respond using markdown.", ("t", "<|user|>"), "\n", Q, ("t", "<|assistant|>")],
                 None, True),
    "deepseek": (["B", "You are an AI programming assistant, utilizing the Deepseek Coder model, developed by "
                       "Deepseek Company, and you only answer questions related to computer science. For politically "
                       "sensitive questions, security and privacy issues, and other non-computer science questions, "
                       "you will refuse to answer.", "\n", ("t", "<|EOT|>"), "\n\n",
                  f"### Instruction:\n{Q}\n\n### Response:\n"], None, True),
    "default": (["B", VICUNA_SYS, "\n", f"Human: {Q}\nAssistant:"], None, False),
    "falcon": (["B", f"User: {Q}\nFalcon:"], None, True),
    "intern": (["B", f"<|User|>:{Q}", ("t", "<eoh>"), "\n<|Bot|>:"], None, True),
    "llama2": (["B", f"[INST] <<SYS>>\n{LLAMA2_SYS}\n<</SYS>>\n\n{Q} [/INST]"], None, False),
    "llama2_zh": (["B", f"[INST] <<SYS>>\n{ZH_SYS}\n<</SYS>>\n\n{Q} [/INST]"], None, False),
    "llama3": (["B", L3H.format("system") + "You are a helpful assistant.<|eot_id|>",
                L3H.format("user") + Q + "<|eot_id|>" + L3H.format("assistant")], "<|eot_id|>", False),
    "llama3_zh": (["B", L3H.format("system") + ZH_SYS + "<|eot_id|>",
                   L3H.format("user") + Q + "<|eot_id|>" + L3H.format("assistant")], "<|eot_id|>", False),
    "mistral": (["B", f"[INST] {Q} [/INST]"], None, False),
    "openchat": (["B", f"GPT4 Correct User: {Q}", ("t", "<|end_of_turn|>"), "GPT4 Correct Assistant:"], None, True),
    "qwen": (["B", ("t", "<|im_start|>"), "system\nYou are a helpful assistant.", ("t", "<|im_end|>"), "\n",
              ("t", "<|im_start|>"), f"user\n{Q}", ("t", "<|im_end|>"), "\n", ("t", "<|im_start|>"), "assistant\n"],
             "<|im_end|>", True),
    "starchat": (["B", ("t", "<|system|>"), "\n", ("t", "<|end|>"), "\n", ("t", "<|user|>"), f"\n{Q}",
                  ("t", "<|end|>"), "\n", ("t", "<|assistant|>")], None, True),
    "vanilla": (["B", Q], None, False),
    "vicuna": (["B", VICUNA_SYS, f"USER: {Q} ASSISTANT:"], None, False),
    "xverse": (["B", f"Human: {Q}\n\nAssistant: "], None, False),
    "yayi": (["B", ("t", "<|System|>"), f":\n{YAYI_SYS}", "\n\n", ("t", "<|Human|>"), f":\n{Q}\n\n",
              ("t", "<|YaYi|>"), ":"], None, False),
    "zephyr": (["B", ("t", "<|system|>"), "\nYou are a friendly chatbot who always responds in the style of a pirate",
                ("t", "</s>"), ("t", "<|user|>"), f"\n{Q}", ("t", "</s>"), ("t", "<|assistant|>")], None, False),
    "ziya": (["B", ("t", "<human>"), f":{Q}\n", ("t", "<bot>"), ":"], None, False),
}
STOP_WORDS = {"aquila": ["</s>"], "chatglm3": ["<|user|>", "<|observation|>"], "deepseek": ["<|EOT|>"],
              "intern": ["<eoa>"], "llama3": ["<|eot_id|>"], "llama3_zh": ["<|eot_id|>"],
              "openchat": ["<|end_of_turn|>"], "qwen": ["<|im_end|>"], "starchat": ["<|end|>"], "yayi": ["<|End|>"]}


def test_every_template_has_a_layout():
    assert sorted(LAYOUTS) == template_names()


def _prepared_tokenizer(path, name):
    """Tokenizer with the template's special tokens and stop words added (as a real model ships them)."""
    tok = AutoTokenizer.from_pretrained(path)
    needed = [x[1] for x in LAYOUTS[name][0] if isinstance(x, tuple)] + STOP_WORDS.get(name, [])
    missing = [t for t in dict.fromkeys(needed) if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tok


def _expected(tok, name, adds_bos):
    layout, eos_token, efficient = LAYOUTS[name]
    ids = []
    for piece in layout:
        if piece == "B":
            ids += [tok.bos_token_id] if adds_bos else []
        elif isinstance(piece, tuple):
            ids.append(tok.convert_tokens_to_ids(piece[1]))
        else:
            ids += tok.encode(piece, add_special_tokens=False)
    eos = tok.convert_tokens_to_ids(eos_token) if eos_token else tok.eos_token_id
    return ids, tok.encode(A, add_special_tokens=False), eos, efficient


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("family", ["llama", "qwen"])
def test_template_ids_match_reference_layout(name, family, tiny_model_dir, tiny_qwen_dir):
    path = tiny_model_dir if family == "llama" else tiny_qwen_dir
    tok = _prepared_tokenizer(path, name)
    size = len(tok)
    prompt_exp, answer_ids, eos, efficient = _expected(tok, name, adds_bos=family == "llama")
    template = get_template_and_fix_tokenizer(name, tok)
    assert len(tok) == size, "no token should be added when the tokenizer has them all"
    assert tok.eos_token_id == eos
    prompt, response = template.encode_oneturn(tok, Q, A)
    assert prompt == prompt_exp
    if efficient:
        assert response == answer_ids
        assert template.final_eos_ids(tok) == [eos]
    else:
        assert response == answer_ids + [eos]
        assert template.final_eos_ids(tok) == []
    assert stop_token_ids(template, tok)[0] == eos


def test_system_override_and_llama2_glue(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = get_template_and_fix_tokenizer("llama2_zh", tok)
    prompt, _ = template.encode_oneturn(tok, Q, "", system="SYS")
    assert prompt == [tok.bos_token_id] + tok.encode(f"[INST] <<SYS>>\nSYS\n<</SYS>>\n\n{Q} [/INST]",
                                                     add_special_tokens=False)


def test_missing_special_tokens_are_added(tiny_qwen_dir):
    tok = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    before = len(tok)
    template = get_template_and_fix_tokenizer("baichuan2", tok)
    assert len(tok) == before + 2
    prompt, _ = template.encode_oneturn(tok, "q")
    assert prompt[0] == tok.convert_tokens_to_ids("<reserved_106>")
    assert prompt[-1] == tok.convert_tokens_to_ids("<reserved_107>")


def test_build_prompt_ids_keeps_assistant_marker(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = get_template_and_fix_tokenizer("alpaca", tok)
    record = {"instruction": "张三在北京工作。" * 200, "input": "tail text"}
    full, truncated = build_prompt_ids(template, tok, record, 10_000)
    assert not truncated
    assert full == template.encode_oneturn(tok, record["instruction"] + "\ntail text")[0]
    ids, truncated = build_prompt_ids(template, tok, record, 120)
    assert truncated and len(ids) <= 120
    marker = tok.encode("\n\n### Response:\n", add_special_tokens=False)
    assert tok.decode(ids).endswith("tail text\n\n### Response:\n")
    assert ids[0] == tok.bos_token_id and len(marker) > 0


def test_training_keeps_examples_that_fit_and_cuts_like_inference(tiny_model_dir):
    from instructkgc.data import encode_supervised
    from instructkgc.utils import IGNORE_INDEX

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = get_template_and_fix_tokenizer("alpaca", tok)
    query, answer = "张三在北京工作。" * 12 + "\ntail text", '{"人物": ["张三"]}'
    prompt, target = template.encode_oneturn(tok, query, answer)
    cutoff = len(prompt) + len(target) + 5
    # Fits: kept whole although the prompt is longer than cutoff - max_target_length (the original cut it).
    ids, labels, cut = encode_supervised(template, tok, query, answer, None, cutoff, max_target_length=cutoff - 10)
    assert not cut and ids == prompt + target
    assert labels == [IGNORE_INDEX] * len(prompt) + target
    # Too long: the answer stays whole and the prompt is cut from the left, exactly as at inference.
    cutoff = len(prompt) + len(target) - 20
    ids, labels, cut = encode_supervised(template, tok, query, answer, None, cutoff, max_target_length=16)
    expected, _ = build_prompt_ids(template, tok, {"instruction": query}, cutoff - len(target))
    assert cut and len(ids) <= cutoff and ids == expected + target
    assert tok.decode(ids[:len(expected)]).endswith("tail text\n\n### Response:\n")
    # P-Tuning's --max_src_len caps the prompt even when the example fits, exactly as its inference does.
    cap = len(prompt) - 10
    ids, labels, cut = encode_supervised(template, tok, query, answer, None, 10_000, 16, max_prompt_len=cap)
    expected, _ = build_prompt_ids(template, tok, {"instruction": query}, cap)
    assert cut and ids == expected + target and len(expected) <= cap


def test_auto_template(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="chat_template"):
        get_template("auto").encode_oneturn(tok, "q", "a")
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    prompt, response = get_template("auto").encode_oneturn(tok, "hello", "world", system="S")
    assert tok.decode(prompt) == "<system>S</s><user>hello</s><assistant>"
    assert tok.decode(response) == "world</s>" and response[-1] == tok.eos_token_id


def test_template_cli(tiny_qwen_dir):
    out = subprocess.run([sys.executable, "-m", "instructkgc.template", "--template", "qwen", "--tokenizer",
                          tiny_qwen_dir, "--query", "你好", "--response", A], capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["prompt_text"].endswith("<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")
    assert result["response_text"] == A + "<|im_end|>"
    out = subprocess.run([sys.executable, "-m", "instructkgc.template", "--template", "nope", "--tokenizer",
                          tiny_qwen_dir, "--query", "q"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown --template" in out.stderr
