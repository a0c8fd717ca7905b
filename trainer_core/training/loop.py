"""TrainingLoop: the one loop every method runs through.

Per optimizer step: take `gradient_accumulation_steps` micro-batches from the
deterministic batch order (batching.py), run the compiled step (step.py) at the
schedule's learning rate (schedules.py), report a `train` record to the
callbacks, evaluate every `eval_every` steps (evaluation.py), checkpoint every
`save_every` steps, and honour a stop request at the step boundary (saving first).

A method may reuse one set of collated batches for `method.passes_per_batch`
consecutive optimizer steps (GRPO optimises one rollout num_iterations times):
new micro-batches are drawn and collated only at multiples of it, and
`method.batch_for_step` adapts the batch to each step.

Everything a resumed run needs is in the checkpoint (loop_state.py): weights, optimizer
moments, step, epoch and position in the epoch's batch order, and, when a
checkpoint falls inside a reuse cycle, the cycle's collated batches (arrays
`cycle.<micro>.<key>` in optimizer.safetensors); the RNG (re-seeded before
collating) and the schedule are pure functions of (seed, step). So 10 steps +
resume to 20 equals 20 uninterrupted steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import mlx.core as mx
from mlx.utils import tree_flatten

from trainer_core.config import best_eval_metric
from trainer_core.data import batching
from trainer_core.errors import UserError
from trainer_core.models import precision
from trainer_core.training import collectives, run_end
from trainer_core.training.callbacks import Callback, CallbackList
from trainer_core.training import loop_state
from trainer_core.training.checkpoint import CheckpointManager, write_checkpoint_dir
from trainer_core.training.evaluation import Evaluation
from trainer_core.training.guard import StepGuard, StepInterrupted, memory_limit
from trainer_core.training.optim import AdamW
from trainer_core.training.schedules import schedule_for
from trainer_core.training.step import CompiledSteps


@dataclass
class TrainResult:
    status: str  # finished | stopped
    step: int
    total_steps: int
    last_train_loss: float | None
    last_eval_loss: float | None
    best_eval_loss: float | None
    final_dir: str | None


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """RNG seed for optimizer step `step` on process `rank`: the random state (dropout, masking,
    sampling) is a pure function of (seed, step, rank), so a resumed run draws the same numbers
    without saving the RNG (MLX's key cannot be restored in place). Ranks draw independently,
    like the rows of one big batch; rank 0 draws what a single process draws."""
    base = (seed * 1_000_003 + step) % (2**63)
    return base if rank == 0 else (base * 1_000_033 + rank * 7_919) % (2**63)


class TrainingLoop:
    def __init__(self, *, config, model, method, train_examples, valid_examples, adapter_config: dict,
                 checkpoints: CheckpointManager | None = None, final_dir=None,
                 callbacks: list[Callback] | tuple = (), world_size: int = 1, rank: int = 0, run_dir=None,
                 fingerprint: dict | None = None):
        self.config, self.model, self.method = config, model, method
        self.train_examples, self.valid_examples = train_examples, valid_examples
        self.checkpoints, self.final_dir = checkpoints, final_dir
        self.callbacks = CallbackList(callbacks)
        self.world_size, self.rank = world_size, rank
        self.stop_requested = False
        self.early_stop_message = ""  # why the run finished early, for its `stopped` event
        self.fingerprint = fingerprint or {}  # model + data identity, checked on resume
        method.bind(model, run_dir)
        self.adapter_config = {**adapter_config, **method.checkpoint_info()}
        self.lengths = [method.length(e) for e in train_examples]
        self.accumulation = config.gradient_accumulation_steps
        self.passes = method.passes_per_batch
        self.cycle = None  # (micro-batch indices, collated batches, token counts) reused for `passes` steps
        self.micro_per_epoch = len(self._epoch_order(0))
        if self.micro_per_epoch < self.accumulation:
            raise UserError(f"The training split has {len(train_examples)} usable examples: fewer than one optimizer step "
                            f"(batch_size {config.batch_size} x gradient_accumulation_steps {self.accumulation}"
                            f"{f' x {world_size} processes' if world_size > 1 else ''}). Add data or lower those values.",
                            field="batch_size")
        self.steps_per_epoch = self.micro_per_epoch // self.accumulation * self.passes
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.learning_rate = schedule_for(config, self.total_steps)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.bad_steps = 0
        self.evals_without_improvement = 0
        self.metrics = {"train_loss": None, "eval_loss": None, "best_eval_loss": None, "eval_score": None,
                        "best_eval_score": None}
        self._order_cache = (None, None)
        model.train()
        params = dict(tree_flatten(model.trainable_parameters()))
        self.optimizer = AdamW(params, beta1=config.adam_beta1, beta2=config.adam_beta2, eps=config.adam_eps,
                               weight_decay=config.weight_decay, param_groups=config.param_groups,
                               stochastic_rounding=config.precision.master_weights == "stochastic_rounding",
                               # adapters only: full fine-tuning's big arrays gain little and the joined copies
                               # would be memory the estimate (training/memory.py) does not count
                               joined=False if config.resolved_fine_tune_type == "full" else None)
        self.steps = CompiledSteps(model, method, self.optimizer, config.max_grad_norm, world_size,
                                   compute_dtype=precision.compute_dtype(model, config.mixed_precision))
        self.evaluation = Evaluation(config, model, method, self.steps, valid_examples, world_size, rank)

    # ---- data order ------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> list[list[int]]:
        if getattr(self, "_order_cache", (None,))[0] == epoch:
            return self._order_cache[1]
        order = batching.epoch_batches(self.lengths, self.config.batch_size, self.config.seed, epoch,
                                       world_size=self.world_size, rank=self.rank)
        self._order_cache = (epoch, order)
        return order

    def _next_micro_batch(self):
        order = self._epoch_order(self.epoch)
        if self.batch_in_epoch >= len(order):
            self.callbacks.on_epoch_end({"step": self.step, "epoch": self.epoch})
            self.epoch += 1
            self.batch_in_epoch = 0
            self.callbacks.on_epoch_begin({"step": self.step, "epoch": self.epoch})
            order = self._epoch_order(self.epoch)
        indices = order[self.batch_in_epoch]
        self.batch_in_epoch += 1
        return [self.train_examples[i] for i in indices], indices

    @property
    def epoch_progress(self) -> float:
        return self.epoch + self.batch_in_epoch / max(1, self.micro_per_epoch)

    def set_total_steps(self, total_steps: int) -> None:
        """Change the run length (resume --max-steps); the schedule follows the new total."""
        self.total_steps = total_steps
        self.learning_rate = schedule_for(self.config, total_steps)

    # ---- control -----------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the loop to stop (and checkpoint) at the next step boundary. Thread-safe."""
        self.stop_requested = True

    def train(self) -> TrainResult:
        """Train to total_steps (or a stop); raises collectives.RankFailure when another rank is lost.
        Every ending, an exception included, is reported as a `stopped` event (run_end.py)."""
        # progress, Stop and the memory limit inside long steps (guard.py)
        self.guard = StepGuard(self.callbacks, lambda: self.stop_requested or self.callbacks.wants_stop(),
                               memory_limit(self.config.max_memory_gb), interruptible=self.world_size == 1)
        self.method.guard = self.evaluation.guard = self.guard
        try:
            result = self._train_reporting_lost_ranks()
        except BaseException as e:
            self._report_end(run_end.reason_for(e), run_end.message_for(e))
            raise
        early = self.early_stop_message
        self._report_end("finished" if result.status == "finished" else "user",
                         early or ("" if result.status == "finished" else f"Stopped at step {result.step} of "
                                   f"{result.total_steps}; resume continues from the last checkpoint."))
        return result

    def _report_end(self, reason: str, message: str) -> None:
        try:  # best effort: the disk may be the reason
            self.callbacks.on_event(run_end.stopped_event(self.step, reason, message))
        except Exception:  # noqa: BLE001  (the original ending is what the user must see)
            pass

    def _train_reporting_lost_ranks(self) -> TrainResult:
        try:
            return self._train()
        except (RuntimeError, collectives.RankFailure) as e:  # the latter from collectives.collective
            latest = self.checkpoints.latest() if self.checkpoints is not None else None
            failure = collectives.rank_failure(getattr(e, "cause", e), world_size=self.world_size,
                                               during=f"at step {self.step + 1}", checkpoint=latest, rank=self.rank)
            if failure is None:
                raise
            self.callbacks.on_event({"step": self.step, "event": "rank_failure", "message": str(failure)})
            raise failure from None

    def _stop_requested(self) -> bool:
        """A stop asked for here (or on any rank: all ranks must stop at the same step)."""
        wanted = self.stop_requested or self.callbacks.should_stop()
        return collectives.any_rank(wanted) if self.world_size > 1 else wanted

    def _train(self) -> TrainResult:
        cfg = self.config
        start_step = self.step
        mx.reset_peak_memory()  # peak_memory_gb is this run's, not the process's (the GUI also chats and loads)
        self.callbacks.on_train_begin({"step": self.step, "total_steps": self.total_steps,
                                       "steps_per_epoch": self.steps_per_epoch, "epoch": self.epoch,
                                       "train_examples": len(self.train_examples),
                                       "valid_examples": len(self.valid_examples)})
        if start_step == 0:
            self.callbacks.on_epoch_begin({"step": 0, "epoch": 0})
        saved_at = evaluated_at = interrupted = None
        status = "finished"
        while self.step < self.total_steps:
            if self._stop_requested():
                status = "stopped"
                break
            patience = cfg.early_stopping_patience
            if patience and self.evals_without_improvement >= patience:
                self.callbacks.on_event({"step": self.step, "event": "early_stop",
                                         "best_eval_loss": self.metrics["best_eval_loss"]})
                self.early_stop_message = (f"Early stopping at step {self.step}: no better eval loss in "
                                                 f"{patience} evaluations")
                self.callbacks.on_log(self.early_stop_message)
                break
            try:
                self._train_step()
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.valid_examples:
                    self.evaluate()
                    evaluated_at = self.step
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save_checkpoint()
                    saved_at = self.step
                self.guard.check_peak(self.step)
            except StepInterrupted as stop:  # Stop or the memory limit inside a step, which was discarded
                self.model.train()  # an evaluation may have been cut short
                status, interrupted = "stopped", stop
                break
        if status == "finished" and self.valid_examples and evaluated_at != self.step:
            self.evaluate()
        if self.step > start_step and saved_at != self.step:
            self.save_checkpoint()
        if interrupted is not None and interrupted.reason == "out_of_memory":
            raise UserError(interrupted.message, reason="out_of_memory")
        final = None
        if status == "finished":
            self.callbacks.on_epoch_end({"step": self.step, "epoch": self.epoch})
            final = self.write_final()
        result = TrainResult(status, self.step, self.total_steps, self.metrics["train_loss"],
                             self.metrics["eval_loss"], self.metrics["best_eval_loss"], final)
        self.callbacks.on_train_end({"step": self.step, "status": status, "total_steps": self.total_steps,
                                     "final_dir": final})
        return result

    def _collate_cycle(self) -> None:
        """At the start of a reuse cycle, draw and collate its micro-batches (GRPO: the rollout)."""
        if self.step % self.passes == 0:
            micro = [self._next_micro_batch() for _ in range(self.accumulation)]
            collated = [self.method.collate(examples) for examples, _ in micro]
            counts = [self.method.batch_tokens(examples, b) for (examples, _), b in zip(micro, collated)]
            batches = self.method.step_batches(collated)  # may split them further (GRPO's passes over rows)
            self.cycle = ([indices for _, indices in micro], batches, counts)

    def _train_step(self) -> None:
        cfg = self.config
        self.callbacks.on_step_begin({"step": self.step})
        started = time.perf_counter()
        mx.random.seed(step_seed(self.config.seed, self.step, self.rank))
        self.guard.step = self.step
        position = (self.epoch, self.batch_in_epoch, self.cycle)
        try:
            self._collate_cycle()
        except StepInterrupted:  # the partial step is discarded: its batches are drawn again on resume
            self.epoch, self.batch_in_epoch, self.cycle = position
            raise
        cycle_indices, batches, counts = self.cycle
        batches = [self.method.batch_for_step(b, self.step) for b in batches]
        learning_rate = self.learning_rate(self.step)
        loss_sum, weight, metric_sums, norm, ok = self.steps.train_step(batches, learning_rate)
        elapsed = time.perf_counter() - started
        self.step += 1
        weight_value = weight.item()
        loss = loss_sum.item() / weight_value if weight_value else float("nan")
        grad_norm = norm.item()
        if not ok.item():
            self.bad_steps += 1
            self.callbacks.on_event({"step": self.step, "event": "bad_step", "loss": loss, "grad_norm": grad_norm,
                                     "batch_indices": [i for idx in cycle_indices for i in idx]})
            if self.bad_steps >= cfg.max_bad_steps:
                raise UserError(f"Training stopped at step {self.step}: {self.bad_steps} consecutive steps had a NaN/Inf "
                                "loss or gradient (updates were skipped, no NaN was saved). Lower learning_rate, "
                                "enable max_grad_norm, or check the data.", reason="nan")
        else:
            self.bad_steps = 0
            self.metrics["train_loss"] = loss
        tokens, input_tokens, padded_tokens = (sum(c[k] for c in counts)
                                               for k in ("trained_tokens", "input_tokens", "padded_tokens"))
        if self.world_size > 1:  # ranks hold different examples: count them all
            tokens, input_tokens, padded_tokens = collectives.sum_ints([tokens, input_tokens, padded_tokens])
        record = {
            "step": self.step, "epoch": round(self.epoch_progress, 4), "loss": loss,
            "learning_rate": learning_rate, "grad_norm": grad_norm,
            "tokens": tokens, "input_tokens": input_tokens, "padded_tokens": padded_tokens,
            "tokens_per_sec": input_tokens / elapsed if elapsed > 0 else 0.0,
            "step_time": elapsed,
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
        }
        record.update({k: v.item() / weight_value for k, v in metric_sums.items()} if weight_value else {})
        if self.step % cfg.report_every == 0 or self.step == self.total_steps:
            self.callbacks.on_step_end(record)

    def evaluate(self) -> dict:
        """Loss (and method metrics) over the valid split; reports an `eval` record."""
        record = {"step": self.step, **self.evaluation.run()}
        loss = record["loss"]
        self.metrics["eval_loss"] = loss
        if math.isfinite(loss) and (self.metrics["best_eval_loss"] is None or loss < self.metrics["best_eval_loss"]):
            self.metrics["best_eval_loss"] = loss
        # the best checkpoint and early stopping go by the method's metric (GRPO: the eval reward), as a score
        # where lower is better; checkpoints keep it in trainer_state (CheckpointManager.best)
        key, mode = best_eval_metric(self.config.method)
        value = record.get(key)
        score = None if value is None or not math.isfinite(value) else (value if mode == "min" else -value)
        self.metrics["eval_score"] = score
        best = self.metrics.get("best_eval_score")
        if score is not None and (best is None or score < best):
            self.metrics["best_eval_score"] = score
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        self.callbacks.on_evaluate(record)
        return record

    # ---- checkpoints ---------------------------------------------------------------
    def save_checkpoint(self):
        """Write checkpoint step-NNNNNN (rank 0 only) and report it."""
        if self.checkpoints is None or self.rank != 0:
            return None
        path = self.checkpoints.save(self.step, **loop_state.checkpoint_parts(self))
        self.callbacks.on_save({"step": self.step, "path": str(path), "train_loss": self.metrics["train_loss"],
                                "eval_loss": self.metrics["eval_loss"]})
        return path

    def write_final(self):
        if self.final_dir is None or self.rank != 0:
            return None
        return str(write_checkpoint_dir(self.final_dir, **loop_state.checkpoint_parts(self)))

    def restore(self, checkpoint) -> None:
        """Load weights, optimizer moments and data position from a checkpoint folder."""
        loop_state.restore(self, checkpoint)
