"""The Method interface the TrainingLoop drives.

A method turns data splits into examples, examples into a padded batch, and a
batch into a loss. `loss` returns `(loss_sum, weight, metric_sums)`: the
training objective is `loss_sum / weight` (weight = target tokens for token
losses, pairs for DPO), and each metric is a sum that the loop divides by the
total weight of the step. Summing before dividing is what makes gradient
accumulation over micro-batches equal one big batch exactly.
"""

from __future__ import annotations

from trainer_core.training.guard import NO_GUARD


class Method:
    name = "base"
    metric_names: tuple[str, ...] = ()
    token_loss = False  # True when loss is a mean token cross-entropy (eval then reports perplexity)
    passes_per_batch = 1  # consecutive optimizer steps that reuse one collated batch (GRPO's num_iterations)
    guard = NO_GUARD  # the loop's StepGuard (training/guard.py): long work in `collate` reports through it

    def __init__(self, config, tokenizer):
        self.config = config
        self.tokenizer = tokenizer

    def bind(self, model, run_dir=None) -> None:
        """Called once by the loop: the model being trained and the run folder (may be None).

        Methods that need the model outside the compiled loss (reference log-probs,
        rollouts) keep it here and use it in `collate`, which runs eagerly.
        """
        self.model = model
        self.run_dir = run_dir

    def checkpoint_info(self) -> dict:
        """Keys (after `bind`) this method adds to adapter_config.json, for loading at inference."""
        return {}

    def prepare(self, splits) -> tuple[list, list, dict]:
        """(train examples, valid examples, data stats dict) from DatasetSplits."""
        raise NotImplementedError

    def length(self, example) -> int:
        """Tokens in an example, for length bucketing."""
        raise NotImplementedError

    def collate(self, examples) -> dict:
        """A batch dict of mx.arrays for `loss`."""
        raise NotImplementedError

    def step_batches(self, batches: list[dict]) -> list[dict]:
        """The micro-batches collated for one optimizer step, seen together once (before `batch_for_step`):
        a method may add what depends on all of them (GRPO's bnpo token total) or split them into smaller ones
        (GRPO's passes over rows; the loop and evaluation sum over whatever comes back). Default: unchanged."""
        return batches

    def batch_for_step(self, batch: dict, step: int) -> dict:
        """`batch` as optimizer step `step` (0-based) uses it; runs eagerly before that step.

        A batch is collated at a step that is a multiple of `passes_per_batch` and serves
        that many consecutive steps. Default: the batch unchanged.
        """
        return batch

    def loss(self, model, batch):
        """(loss_sum, weight, {metric: sum}) as mx scalars; traced by mx.compile."""
        raise NotImplementedError

    def batch_tokens(self, examples, batch) -> dict:
        """Host-side counts: real (unpadded) input tokens, padded tokens, trained tokens."""
        ids = batch["input_ids"]
        return {"input_tokens": sum(self.length(e) for e in examples), "padded_tokens": int(ids.size),
                "trained_tokens": sum(sum(e.target_mask) for e in examples)}
