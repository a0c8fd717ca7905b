"""What a checkpoint holds of a TrainingLoop, and putting it back: the loop's collaborator for
exact resume.

A checkpoint is weights (adapters, or every parameter for full fine-tuning, in the model's dtype), the
optimizer's moments, the float32 master weights of a 16-bit model (`master.<name>`, models/precision.py), the arrays of a GRPO reuse cycle still in progress (`cycle.<micro>.<key>`), and
trainer_state.json: step, epoch, position in the epoch's batch order, counters, metrics, the
config and the model/data fingerprint. The RNG and the schedule are pure functions of
(seed, step), so nothing else is needed for 10 steps + resume to equal 20 uninterrupted steps.
"""

from __future__ import annotations

import hashlib
import json
import time

import mlx.core as mx
from mlx.utils import tree_flatten

from trainer_core import versions
from trainer_core.errors import UserError
from trainer_core.models.precision import model_dtype
from trainer_core.training.checkpoint import read_state


def config_hash(config) -> str:
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_parts(loop) -> dict:
    """The keyword arguments of CheckpointManager.save / write_checkpoint_dir for `loop` now."""
    return {"weights": _weights(loop), "adapter_config": loop.adapter_config,
            "optimizer": _optimizer_arrays(loop), "state": _trainer_state(loop)}


def _weights(loop) -> dict:
    params = loop.model.trainable_parameters() if loop.adapter_config["fine_tune_type"] != "full" \
        else loop.model.parameters()
    dtype = model_dtype(loop.model)  # float32 masters are saved in the model's own dtype (and kept below)
    return {k: v.astype(dtype) if dtype is not None and v.dtype == mx.float32 else v
            for k, v in tree_flatten(params)}


def _optimizer_arrays(loop) -> dict:
    state = loop.optimizer.by_name(loop.steps.optimizer_state)  # per name, whatever the optimizer's layout
    arrays = {"t": state["t"], **{f"m.{k}": v for k, v in state["m"].items()},
              **{f"v.{k}": v for k, v in state["v"].items()}}
    if model_dtype(loop.model) is not None:
        arrays.update({f"master.{k}": v for k, v in tree_flatten(loop.model.trainable_parameters())})
    if loop.step % loop.passes:  # the next steps reuse this cycle's batches
        arrays.update({f"cycle.{i}.{k}": v for i, batch in enumerate(loop.cycle[1]) for k, v in batch.items()})
    return arrays


def _trainer_state(loop) -> dict:
    return {
        "step": loop.step, "total_steps": loop.total_steps, "epoch": loop.epoch,
        "batch_in_epoch": loop.batch_in_epoch, "epoch_progress": loop.epoch_progress,
        "rng": "re-seeded at every step from (seed, step)", "bad_steps": loop.bad_steps,
        "evals_without_improvement": loop.evals_without_improvement,
        "cycle": {"indices": loop.cycle[0], "counts": loop.cycle[2]} if loop.step % loop.passes else None,
        "config": loop.config.to_dict(), "fingerprint": loop.fingerprint,
        "metrics": {k: v for k, v in loop.metrics.items() if v is not None},
        "method": loop.config.method, "world_size": loop.world_size,
        "config_hash": config_hash(loop.config), "versions": versions(), "time": time.time(),
    }


def restore(loop, checkpoint) -> None:
    """Load weights, optimizer moments, data position and counters from `checkpoint` into `loop`."""
    state = read_state(checkpoint)
    if state.get("world_size", 1) != loop.world_size:
        raise UserError(f"{checkpoint} was written by a run with {state.get('world_size', 1)} processes; "
                        f"resume it with the same number (now {loop.world_size}).")
    weights = mx.load(str(checkpoint / "adapters.safetensors"))
    if model_dtype(loop.model) is not None:  # a model with float32 masters stays float32 (checkpoints before masters)
        weights = {k: v.astype(mx.float32) if v.dtype == model_dtype(loop.model) else v for k, v in weights.items()}
    loop.model.load_weights(list(weights.items()), strict=False)
    arrays = mx.load(str(checkpoint / "optimizer.safetensors"))
    masters = [(k[len("master."):], v) for k, v in arrays.items() if k.startswith("master.")]
    if masters:  # the float32 masters, not their 16-bit rounding in adapters.safetensors
        loop.model.load_weights(masters, strict=False)
    loop.steps.optimizer_state = loop.optimizer.from_names({
        "t": arrays["t"],
        "m": {k: arrays[f"m.{k}"] for k in loop.optimizer.names},
        "v": {k: arrays[f"v.{k}"] for k in loop.optimizer.names},
    })
    loop.step, loop.epoch, loop.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
    if state.get("cycle"):
        count = 1 + max(int(k.split(".")[1]) for k in arrays if k.startswith("cycle."))  # step_batches may split
        batches = [{k.split(".", 2)[2]: v for k, v in arrays.items() if k.startswith(f"cycle.{i}.")}
                   for i in range(count)]
        loop.cycle = (state["cycle"]["indices"], batches, state["cycle"]["counts"])
    loop.bad_steps = state.get("bad_steps", 0)
    loop.evals_without_improvement = state.get("evals_without_improvement", 0)
    loop.metrics.update(state.get("metrics", {}))
    mx.eval(loop.model.parameters(), loop.steps.optimizer_state)
