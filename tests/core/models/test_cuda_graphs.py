"""MLX's CUDA graph size (models/cuda_graphs.py): bytes lowered on Linux before MLX starts where MLX's default is
larger, kernels raised where measured (compute capability 9.0), the user's values kept, Metal left alone; the
memory estimate counts what the graphs in flight keep alive,
on a CUDA GPU only."""

from __future__ import annotations

import os

import mlx.core as mx
import pytest

from tests.core.training.test_memory import DEMO, lora
from trainer_core.models import cuda_graphs
from trainer_core.training import memory


def test_importing_trainer_core_sized_the_graphs_before_mlx():
    """trainer_core/__init__ decided before MLX was imported (this machine: no NVIDIA GPU, so MLX's default)."""
    found = cuda_graphs.compute_capability()
    lowered = found is not None and cuda_graphs.MLX_DEFAULT_MB.get(found, cuda_graphs.MLX_OTHER_MB) > 250
    assert os.environ.get(cuda_graphs.VARIABLE) == ("250" if lowered else None)
    assert os.environ.get(cuda_graphs.OPS_VARIABLE) == ("400" if found == "9.0" else None)


@pytest.mark.parametrize("capability, expected", [
    ("9.0", "250"), ("10.0", "250"), ("12.0", "250"), ("8.0", "250"),  # H100/H200, B200, Blackwell, A100: lowered
    ("8.6", None), ("8.9", None), ("12.1", None), (None, None),  # MLX's default is smaller already; no GPU
])
def test_linux_lowers_mlx_s_graph_size_only_where_its_default_is_larger(capability, expected):
    env = {}
    cuda_graphs.size_graphs(env, "linux", lambda: capability)
    assert env.get(cuda_graphs.VARIABLE) == expected
    # more kernels a graph only where that was measured faster (H100, compute capability 9.0)
    assert env.get(cuda_graphs.OPS_VARIABLE) == ("400" if capability == "9.0" else None)


def test_a_value_the_user_set_is_kept_and_macos_is_left_alone():
    asked = []
    both = {cuda_graphs.VARIABLE: "64", cuda_graphs.OPS_VARIABLE: "50"}
    env = dict(both)
    cuda_graphs.size_graphs(env, "linux", lambda: asked.append(1) or "9.0")
    assert env == both and not asked
    env = {cuda_graphs.VARIABLE: "64"}  # each variable on its own: the other is still sized
    cuda_graphs.size_graphs(env, "linux", lambda: "9.0")
    assert env == {cuda_graphs.VARIABLE: "64", cuda_graphs.OPS_VARIABLE: "400"}
    env = {cuda_graphs.OPS_VARIABLE: "50"}
    cuda_graphs.size_graphs(env, "linux", lambda: "9.0")
    assert env == {cuda_graphs.VARIABLE: "250", cuda_graphs.OPS_VARIABLE: "50"}
    env = {}
    cuda_graphs.size_graphs(env, "darwin", lambda: asked.append(1) or "9.0")
    assert env == {} and not asked


def test_compute_capability_reads_nvidia_smi(tmp_path, monkeypatch):
    """The first GPU's line of `nvidia-smi --query-gpu=compute_cap` (a stand-in script on PATH); a failing
    nvidia-smi, or none, is no GPU."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1" = "--query-gpu=compute_cap" ] && printf "9.0\\n8.6\\n" && exit 0\nexit 3\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cuda_graphs.compute_capability() == "9.0"
    smi.write_text("#!/bin/sh\nexit 9\n")
    assert cuda_graphs.compute_capability() is None
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert cuda_graphs.compute_capability() is None


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
