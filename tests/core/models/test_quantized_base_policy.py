"""quantized_base = auto: QLoRA on a GPU and for every base over 1B parameters; small bases dequantized where MLX's
quantized kernels are slow (its CPU backend); full fine-tuning always on floats (issue 19 item 3)."""

import pytest

from trainer_core.models import loading


@pytest.mark.parametrize("slow,parameters,full,expected", [
    (True, 135_000_000, False, True),      # the demo on a CPU: float is ~40x faster
    (True, 3_000_000_000, False, False),   # a 3B base on a CPU: its float copy would not fit, stay QLoRA
    (True, 3_000_000_000, True, True),     # full fine-tuning needs floats
    (False, 135_000_000, False, False),    # a GPU: quantized kernels are fast
])
def test_auto_policy(monkeypatch, slow, parameters, full, expected):
    monkeypatch.setattr(loading, "quantized_kernels_slow", lambda: slow)
    assert loading.should_dequantize("auto", full, parameters) is expected
    assert loading.should_dequantize("keep", False, parameters) is False
    assert loading.should_dequantize("dequantize", False, parameters) is True
