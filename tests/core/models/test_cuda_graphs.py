"""MLX's CUDA graph size (models/cuda_graphs.py): set on Linux before MLX starts, the user's value kept, Metal left
alone; the memory estimate counts what the graphs in flight keep alive on a CUDA GPU only."""

from __future__ import annotations

import os

import mlx.core as mx
import pytest

from tests.core.training.test_memory import DEMO, lora
from trainer_core.models import cuda_graphs
from trainer_core.training import memory


def test_importing_trainer_core_sized_the_graphs_of_this_process():
    assert os.environ.get(cuda_graphs.VARIABLE), "trainer_core/__init__ sets it on Linux before MLX is used"


def test_linux_gets_the_default_size_and_a_value_the_user_set_is_kept():
    env = {}
    cuda_graphs.limit_graph_bytes(env, "linux")
    assert env == {cuda_graphs.VARIABLE: "250"}
    env = {cuda_graphs.VARIABLE: "64"}
    cuda_graphs.limit_graph_bytes(env, "linux")
    assert env == {cuda_graphs.VARIABLE: "64"}


def test_macos_keeps_metal_s_own_command_buffer_sizes():
    env = {}
    cuda_graphs.limit_graph_bytes(env, "darwin")
    assert env == {}


def test_estimate_adds_the_graphs_in_flight_on_a_cuda_gpu_only(monkeypatch):
    config = lora(batch_size=4, max_seq_length=1024)
    on_cpu = memory.estimate(DEMO, config, 1024)
    assert cuda_graphs.run_ahead_bytes() == 0 and not on_cpu.parts["in flight (CUDA graphs)"]
    monkeypatch.setattr(mx, "default_device", lambda: mx.gpu)  # what MLX's CUDA backend reports on Linux
    monkeypatch.setattr(memory, "chunked_attention", lambda rows, heads, tokens: 0)  # as on a GPU
    monkeypatch.setattr(cuda_graphs.sys, "platform", "linux")
    monkeypatch.setenv(cuda_graphs.VARIABLE, "100")
    on_gpu = memory.estimate(DEMO, config, 1024)
    assert on_gpu.parts["in flight (CUDA graphs)"] == 10 * 100e6
    step = on_gpu.parts["activations"] + on_gpu.parts["logits"]
    assert on_gpu.peak == pytest.approx(sum(on_gpu.parts.values()))
    monkeypatch.setenv(cuda_graphs.VARIABLE, "100000")  # more than the step ever makes: at most the step again
    assert memory.estimate(DEMO, config, 1024).parts["in flight (CUDA graphs)"] == step
    assert any(line.strip().startswith("in flight (CUDA graphs)") for line in on_gpu.lines())
