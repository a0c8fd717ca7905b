"""Searching the Hub (against the loopback fake Hub): what each result says, most downloaded first,
and one message when the Hub cannot be asked."""

import huggingface_hub.constants
import pytest

from trainer_core.errors import UserError
from trainer_core.hub.search import search_models


@pytest.fixture
def hub(fake_hub):
    fake_hub.add_repo("mlx-community/Qwen2.5-0.5B-Instruct-4bit", {"config.json": b"{}"}, downloads=500,
                      tags=["mlx", "license:apache-2.0"], config={"model_type": "qwen2"}, usedStorage=278_000_000,
                      safetensors={"parameters": {"U32": 62_000_000, "BF16": 15_000_000}, "total": 77_000_000})
    fake_hub.add_repo("org/Qwen3-0.6B-GGUF", {"a-Q4_K_M.gguf": b"x"}, downloads=300, gated=True,
                      tags=["gguf", "license:mit"], gguf={"architecture": "qwen3", "total": 600_000_000})
    fake_hub.add_repo("org/Falcon-GGUF", {"a.gguf": b"x"}, downloads=100, tags=["gguf"],
                      gguf={"architecture": "falcon", "total": 7_000_000_000})
    fake_hub.add_repo("org/weird", {"config.json": b"{}"}, downloads=1, config={"model_type": "notathing"})
    return fake_hub


def test_results_describe_each_model(hub):
    found = search_models("")
    assert [m.repo_id for m in found] == ["mlx-community/Qwen2.5-0.5B-Instruct-4bit", "org/Qwen3-0.6B-GGUF",
                                           "org/Falcon-GGUF", "org/weird"]
    mlx, qwen3, falcon, weird = found
    assert (mlx.kind, mlx.quantization, mlx.license, mlx.parameters, mlx.size_bytes, mlx.gated, mlx.trainable) == (
        "MLX", "4-bit", "apache-2.0", 77_000_000, 278_000_000, False, True)
    assert (qwen3.kind, qwen3.parameters, qwen3.gated, qwen3.trainable, qwen3.license) == (
        "GGUF", 600_000_000, True, True, "mit")
    assert "'falcon' is not supported" in falcon.reason
    assert "'notathing'" in weird.reason
    assert [m.repo_id for m in search_models("qwen")] == [mlx.repo_id, qwen3.repo_id]


def test_search_failures_are_one_message(hub, monkeypatch):
    hub.stop()
    waits = []
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", waits.append)  # huggingface_hub's retries
    with pytest.raises(UserError, match="cannot be reached"):
        search_models("qwen")
    assert waits == []  # at once: no retries with back-off before the message
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        search_models("qwen")
