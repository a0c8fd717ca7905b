"""Issue 26 item 4, a CPU lever measured, not applied: the tied LM head's softmax and its gradient in numpy.

usage: numpy_head.py MODEL_FOLDER DATA_FOLDER   (e.g. the throughput bench's demo-f32 model-f32 and data)

MLX's Linux CPU exp is scalar (16x slower than numpy's, cpu_split.py), and the head's softmax over a 49k vocabulary
is ~17 M exps forward and again backward per demo step. Here the head + cross-entropy is an `mx.custom_function`
whose forward evaluates the body's hidden states, computes the token NLLs and d(loss)/d(hidden) with numpy (its
vectorised exp, OpenBLAS matmuls, 128-row chunks) and whose vjp hands back that gradient, so the step cannot be
compiled. Prints the loss and LoRA gradients against the product's (compiled) path and both step times."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import trainer_core  # noqa: E402,F401  (OpenBLAS before MLX)
import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from cpu_split import first_batch, ms  # noqa: E402

ROWS = 128


def numpy_head(weight: mx.array):
    """(hidden [N, d], targets [N] int32, mask [N] float32) -> sum of masked NLLs; the gradient to hidden only."""
    saved = {}

    @mx.custom_function
    def head(hidden, targets, mask):
        h, w = np.array(hidden, copy=False), np.array(weight, copy=False)
        t, m = np.array(targets), np.array(mask)
        total, grad = 0.0, np.empty_like(h)
        for start in range(0, h.shape[0], ROWS):
            rows = slice(start, start + ROWS)
            logits = h[rows] @ w.T
            top = logits.max(axis=1, keepdims=True)
            e = np.exp(logits - top)
            s = e.sum(axis=1, keepdims=True)
            picked = np.arange(logits.shape[0]), t[rows]
            total += float(((np.log(s[:, 0]) + top[:, 0] - logits[picked]) * m[rows]).sum())
            e /= s
            e[picked] -= 1.0
            grad[rows] = (e * m[rows, None]) @ w
        saved["grad"] = grad
        return mx.array(total, dtype=mx.float32)

    @head.vjp
    def head_vjp(primals, cotangent, output):
        hidden, targets, mask = primals
        return mx.array(saved["grad"]) * cotangent, mx.zeros_like(targets), mx.zeros_like(mask)

    return head


def main():
    loop, batch = first_batch(sys.argv[1], sys.argv[2])
    model, method = loop.model, loop.method
    head = numpy_head(model.model.embed_tokens.weight)

    def ours_loss(m, b):
        ids = b["input_ids"]
        hidden = m.model(ids[:, :-1])
        flat = hidden.reshape(-1, hidden.shape[-1])
        mask = b["target_mask"][:, 1:].astype(mx.float32).reshape(-1)
        return head(flat, ids[:, 1:].reshape(-1), mask) / mask.sum()

    def product_loss(m, b):
        loss_sum, weight, _ = method.loss(m, b)
        return loss_sum / weight

    product = nn.value_and_grad(model, product_loss)
    numpy_side = nn.value_and_grad(model, ours_loss)
    (a, ga), (b, gb) = product(model, batch), numpy_side(model, batch)
    mx.eval(a, ga, b, gb)
    diffs = [float(mx.abs(x - y).max() / (mx.abs(x).max() + 1e-12)) for (_, x), (_, y)
             in zip(tree_flatten(ga), tree_flatten(gb))]
    print(f"batch {tuple(batch['input_ids'].shape)}: loss product {a.item():.6f}, numpy head {b.item():.6f}; "
          f"LoRA gradients: largest relative difference {max(diffs):.2e} over {len(diffs)} arrays")
    print(f"product train step (compiled)       {ms(lambda: loop.steps.train_step([batch], 1e-4)):6.0f} ms")
    print(f"product value_and_grad (uncompiled)  {ms(lambda: mx.eval(product(model, batch))):6.0f} ms")
    print(f"numpy-head value_and_grad            {ms(lambda: mx.eval(numpy_side(model, batch))):6.0f} ms")


if __name__ == "__main__":
    main()
