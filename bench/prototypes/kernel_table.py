"""What the GPU does during a few training steps: kernel time by kind, and how long it sits idle.

MLX has no kernel profiler of its own on CUDA; torch.profiler's CUPTI tracing records every kernel the process
launches, MLX's included (CUDA graphs too), so a process with both torch and mlx-cuda can time MLX's kernels.
`profile(step, n)` runs `step` n times under it and summarises the trace (prototype: bench/RESULTS.md says what
it found).
"""
from __future__ import annotations

import json
import os
import re
import tempfile

# kinds, first match wins (names as CUPTI reports them: cuBLASLt's nvjet/sm90 GEMMs, cuDNN's attention, MLX's own)
KINDS = [
    ("gemm", re.compile(r"gemm|nvjet|cutlass|xmma|cublas|matmul", re.I)),
    ("attention", re.compile(r"sdpa|flash|fmha|attention|cudnn", re.I)),
    ("reduce", re.compile(r"reduce|softmax|logsumexp|norm|arg", re.I)),
    ("copy", re.compile(r"copy|memcpy|memset|concat|gather|scatter|slice|transpose", re.I)),
    ("fused", re.compile(r"compiled|fused", re.I)),
]


def kind(name: str) -> str:
    for label, pattern in KINDS:
        if pattern.search(name):
            return label
    return "other"


def summarise(events: list[dict], steps: int, top: int = 25) -> dict:
    """events: chrome-trace kernel events ({"name", "ts", "dur"} in microseconds)."""
    events = sorted(events, key=lambda e: e["ts"])
    if not events:
        return {"kernels": 0}
    busy, end, gaps = 0.0, events[0]["ts"], []
    for e in events:
        start, stop = e["ts"], e["ts"] + e["dur"]
        if start > end:
            gaps.append(start - end)
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    wall = end - events[0]["ts"]
    by_kind: dict[str, list] = {}
    by_name: dict[str, list] = {}
    for e in events:
        for table, key in ((by_kind, kind(e["name"])), (by_name, e["name"][:90])):
            row = table.setdefault(key, [0, 0.0])
            row[0] += 1
            row[1] += e["dur"]
    ms = lambda us: round(us / 1000 / steps, 3)  # noqa: E731  per step
    return {
        "steps": steps, "kernels_per_step": round(len(events) / steps), "wall_ms": ms(wall),
        "busy_ms": ms(busy), "idle_ms": ms(wall - busy),
        "idle_gaps_over_50us_ms": ms(sum(g for g in gaps if g > 50)),
        "gaps_over_50us_per_step": round(sum(1 for g in gaps if g > 50) / steps, 1),
        "by_kind_ms": {k: [round(v[0] / steps), ms(v[1])] for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1][1])},
        "top": [[n, round(v[0] / steps), ms(v[1])] for n, v in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]],
    }


def kernel_events(trace: dict) -> list[dict]:
    return [e for e in trace.get("traceEvents", []) if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
            and e.get("ph") == "X"]


def profile(step, steps: int, trace_name: str = "mlx-step-trace.json") -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile
    if torch.cuda.is_available():
        torch.cuda.init()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    out = os.environ.get("OUT")
    if out:  # the raw trace comes back with the run's files (chrome://tracing, Perfetto)
        with open(os.path.join(out, trace_name), "w") as f:
            json.dump({"traceEvents": kernel_events(trace)}, f)
    return summarise(kernel_events(trace), steps)
