"""Shared fixtures. Importing trainer_core first loads OpenBLAS before MLX."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# nothing a test writes on its own (token cache, settings) lands in the real user folders
os.environ.setdefault("FINETUNE_STUDIO_HOME", __import__("tempfile").mkdtemp(prefix="fts-tests-home-"))

import trainer_core  # noqa: E402,F401
import pytest  # noqa: E402

from tests.tiny_model import make_tiny_llama  # noqa: E402
from tests.fake_hub import fake_hub, hf_cache  # noqa: E402,F401  (fixtures: a loopback Hugging Face Hub, a cache)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A float32 random Llama folder (hidden 64, 2 layers, BPE vocab ~512)."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_quant_model_dir(tmp_path_factory):
    """The same architecture, 4-bit quantized (group 32): a QLoRA base."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-q4"), quantize_bits=4)
