"""Where a demo LoRA step goes on the Linux CPU (issue 26 item 4): BLAS matmuls vs everything else.
usage: cpu_split.py MODEL_FOLDER DATA_FOLDER   (e.g. the throughput bench's /tmp/bench-work/demo-f32/model-f32, .../data)

Prints, at the shape of the first batch of 4: the compiled forward, value_and_grad, the product's train step, the
model body's forward, the tied LM head's matmul alone and with its log-sum-exp; then every weight matrix's forward
and input-gradient matmuls alone (the BLAS-bound part of a LoRA step, its GFLOP/s), and MLX's elementwise exp
against numpy's on a [rows, vocab] array (MLX's Linux CPU kernels are scalar: no x86 SIMD upstream yet)."""
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import trainer_core  # noqa: E402,F401  (OpenBLAS before MLX)
import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from trainer_core import runner  # noqa: E402
from trainer_core.config import RunConfig  # noqa: E402


def ms(fn, n=5):
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def first_batch(model_dir: str, data_dir: str):
    """The product's training loop for a LoRA run of the model on the data (batch 4) and its first collated batch."""
    config = RunConfig(method="lora", model=model_dir, data=data_dir, batch_size=4, max_steps=1, save_every=0,
                       eval_every=0, num_samples=0, output_dir=tempfile.mkdtemp(), run_name="probe").validate()
    loop = runner.build_run(config).loop
    return loop, loop.method.collate(loop.train_examples[:4])


def main():
    loop, batch = first_batch(sys.argv[1], sys.argv[2])
    model, method = loop.model, loop.method
    rows = batch["input_ids"].shape[0] * (batch["input_ids"].shape[1] - 1)
    forward = mx.compile(lambda b: method.loss(model, b)[0], inputs=[model.state])
    grad = nn.value_and_grad(model, lambda m, b: method.loss(m, b)[0])
    body = mx.compile(lambda ids: model.model(ids), inputs=[model.state])
    ids = batch["input_ids"][:, :-1]
    hidden = body(ids)
    head = model.model.embed_tokens.weight
    mx.eval(hidden)
    print(f"batch {tuple(batch['input_ids'].shape)} ({rows} positions)")
    print(f"forward (compiled)      {ms(lambda: mx.eval(forward(batch))):6.0f} ms")
    print(f"value_and_grad          {ms(lambda: mx.eval(grad(model, batch))):6.0f} ms")
    print(f"train step (product)    {ms(lambda: loop.steps.train_step([batch], 1e-4)):6.0f} ms")
    print(f"body forward            {ms(lambda: mx.eval(body(ids))):6.0f} ms")
    print(f"head matmul             {ms(lambda: mx.eval(hidden @ head.T)):6.0f} ms")
    print(f"head + logsumexp        {ms(lambda: mx.eval(mx.logsumexp(hidden @ head.T, axis=-1))):6.0f} ms")
    shapes = [w.shape for name, w in tree_flatten(model.parameters()) if w.ndim == 2 and "lora" not in name]
    weights = [mx.random.normal(s) * 0.02 for s in shapes]
    xs = [mx.random.normal((rows, s[1])) for s in shapes]
    dys = [mx.random.normal((rows, s[0])) for s in shapes]
    mx.eval(weights, xs, dys)
    took = ms(lambda: mx.eval([x @ w.T for x, w in zip(xs, weights)] + [d @ w for d, w in zip(dys, weights)]))
    flops = sum(4 * rows * s[0] * s[1] for s in shapes)
    print(f"matmuls alone           {took:6.0f} ms  ({len(shapes)} matrices, forward + input gradient, "
          f"{flops / took / 1e6:.0f} GFLOP/s)")
    logits = mx.random.normal((rows, head.shape[0]))
    mx.eval(logits)
    as_numpy = np.array(logits)
    print(f"exp of [{rows}, {head.shape[0]}]: MLX {ms(lambda: mx.eval(mx.exp(logits))):.0f} ms, "
          f"numpy {ms(lambda: np.exp(as_numpy)):.0f} ms")


if __name__ == "__main__":
    main()
