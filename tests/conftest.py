"""Shared fixtures: tiny locally-built models (never downloaded), offline mode.

``TINY_MODEL_SEED=N`` re-runs the suite on tiny models initialised with another seed (the learning tests must
pass for any seed, not one lucky draw).
"""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


SEED = int(os.environ.get("TINY_MODEL_SEED", "0"))


@pytest.fixture(scope="session")
def tiny_seed():
    """The seed the tiny models are initialised with."""
    return SEED


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random-init Llama-style model + SentencePiece-like tokenizer (bos <s>, eos </s>)."""
    from instructkgc.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), arch="llama", seed=SEED)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    """A tiny random-init Qwen2-style model + byte-level BPE tokenizer (<|im_start|>, <|im_end|>)."""
    from instructkgc.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_qwen"), arch="qwen2", seed=SEED)


def pytest_configure(config):
    config.addinivalue_line("markers", "ray: runs on a local Ray session (the --ray path); -m 'not ray' skips")
