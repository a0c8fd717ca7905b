"""The next step's graph, recorded on the host while the device still runs this one.

Calling a compiled step only records its graph (MLX is lazy); on the host that takes a while: 17 ms for a
24-layer LoRA model on this CI machine's CPU (bench/RESULTS.md, "Host work between steps"), during which a
GPU that has finished the step before sits idle. So once step N has been started (`mx.async_eval`), the loop
draws, collates and records step N+1 on top of N's not-yet-computed state, puts the model, optimizer and data
position back to after N, waits for N's results and reports them. Nothing of N+1 runs until the next
`_train_step` commits it: then its recorded state becomes the model's, and it starts at once.

Speculative, and exact: step N+1 is drawn exactly as the loop would draw it (the RNG seeded for N+1 before its
batches are collated, the schedule's learning rate), callbacks see the state after N as always, and a
recorded step is committed only if the model and optimizer still hold the very arrays it was recorded from;
if a callback (or a restore) replaced any, or the loop does something else first (stop, early stop, an error,
an evaluation or checkpoint), it is dropped unrun. The RNG needs no putting back: every step seeds it anew,
and evaluation and checkpoint samples draw nothing from it (explicit keys, greedy decoding); dropping seeds it
with the dropped step's seed so that nothing later reaches into the dropped graph through it. Only where it is
cheap and safe: on a GPU (ENABLED), one process, one micro-batch a step, a method whose collating does no work
of its own (not GRPO's rollout), no evaluation or checkpoint due before it, no epoch boundary, within the run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import mlx.core as mx

# None: FINETUNE_PREBUILD=1 / 0 if set, else on a GPU only. On a CPU the graph is recorded on the cores that
# compute the step (measured on this 2-core machine: no gain); the tests set FINETUNE_PREBUILD=1 so that the
# whole suite, subprocesses included, runs the path GPUs take. bench/throughput.py --ours-no-prebuild: False.
ENABLED: bool | None = None
VARIABLE = "FINETUNE_PREBUILD"


@dataclass
class Prebuilt:
    step: int  # the loop's `step` when it is committed
    started: float  # perf_counter when its drawing began
    learning_rate: float
    batches: list
    out: tuple  # the compiled step's lazy outputs
    state: tuple  # (parameters, optimizer state) it leaves: the model's when it is committed
    position: tuple  # (epoch, batch_in_epoch, cycle) after it was drawn
    base: list  # ids of the arrays it was recorded from
    held: tuple  # those arrays: kept alive so that no new array can take one of their ids
    seed: int  # the RNG seed it was drawn with


def possible(loop) -> bool:
    """Whether the next step may be recorded now (`loop.step` already counts the current one as done)."""
    cfg, done = loop.config, loop.step
    enabled = ENABLED
    if enabled is None:
        wanted = os.environ.get(VARIABLE, "")
        enabled = wanted == "1" if wanted in ("0", "1") else mx.default_device() == mx.gpu
    return (enabled and loop.world_size == 1 and loop.accumulation == 1 and loop.passes == 1
            and cfg.method != "grpo" and done < loop.total_steps
            and not (cfg.eval_every and done % cfg.eval_every == 0 and loop.valid_examples)
            and not (cfg.save_every and done % cfg.save_every == 0)
            and loop.batch_in_epoch < len(loop._epoch_order(loop.epoch)))


def _copy(tree):
    """New containers, the same arrays (mlx.utils.tree_map does this 5x slower)."""
    if isinstance(tree, dict):
        return {k: _copy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_copy(v) for v in tree)
    return tree


def _state(loop) -> tuple:
    """References to the model's and optimizer's arrays (nothing is copied); `parameters()` builds new containers."""
    return loop.model.parameters(), _copy(loop.steps.optimizer_state)


def _ids(tree) -> list[int]:
    if isinstance(tree, dict):
        return [i for v in tree.values() for i in _ids(v)]
    if isinstance(tree, (list, tuple)):
        return [i for v in tree for i in _ids(v)]
    return [id(tree)]


def _put(loop, state: tuple, position: tuple) -> None:
    loop.model.update(state[0])
    loop.steps.optimizer_state = state[1]
    loop.epoch, loop.batch_in_epoch, loop.cycle = position


def record(loop) -> Prebuilt | None:
    """Draw and record the next step, then put the model, optimizer and data position back. Never raises: a step
    that fails to draw or record is not recorded (the loop meets the error again when it takes that step)."""
    started = time.perf_counter()
    before, position = _state(loop), (loop.epoch, loop.batch_in_epoch, loop.cycle)
    try:
        learning_rate, batches = loop._draw_step()
        out = loop.steps.build(batches[0], learning_rate)
    except Exception:  # noqa: BLE001  (speculative: the real step reports it)
        _put(loop, before, position)
        return None
    pre = Prebuilt(loop.step, started, learning_rate, batches, out, _state(loop),
                   (loop.epoch, loop.batch_in_epoch, loop.cycle), _ids(before), before, loop.step_seed())
    _put(loop, before, position)
    return pre


def commit(loop, pre: Prebuilt | None) -> Prebuilt | None:
    """`pre`, now the model's state, if it was recorded for this step from the arrays the model and optimizer
    hold now (after on_step_begin); else None (dropped)."""
    if pre is None:
        return None
    if pre.step != loop.step or pre.base != _ids(_state(loop)):
        mx.random.seed(pre.seed)
        return None
    _put(loop, pre.state, pre.position)
    return pre


def discard(loop) -> None:
    """Drop a recorded step, if any (the model already holds the state after the step before it)."""
    pre, loop.prebuilt = loop.prebuilt, None
    if pre is not None:
        mx.random.seed(pre.seed)
