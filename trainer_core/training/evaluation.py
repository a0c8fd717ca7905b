"""Evaluation over the valid split: the loop's collaborator for `eval` records.

Examples are sorted by length and cut into batches of `batch_size` (the first `eval_batches` of
them when that is set); rank r of a data-parallel run evaluates every world_size-th batch and the
sums meet in one all_sum, so N processes report what one process would. Returns the record's
numbers; the loop adds the step, tracks the best score and reports it.
"""

from __future__ import annotations

import math

import mlx.core as mx

from trainer_core.training.guard import NO_GUARD


class Evaluation:
    def __init__(self, config, model, method, steps, valid_examples, world_size: int = 1, rank: int = 0):
        self.config, self.model, self.method, self.steps = config, model, method, steps
        self.valid_examples = valid_examples
        self.world_size, self.rank = world_size, rank
        self.guard = NO_GUARD  # the loop's StepGuard: progress, Stop and the memory limit between batches

    def run(self) -> dict:
        """{"loss", "tokens"[, "perplexity"], method metrics...} over the valid split (eval mode, then train)."""
        self.model.eval()
        examples = sorted(range(len(self.valid_examples)), key=lambda i: self.method.length(self.valid_examples[i]))
        size = self.config.batch_size
        chunks = [examples[i:i + size] for i in range(0, len(examples), size)]
        if self.config.eval_batches:
            chunks = chunks[:self.config.eval_batches]
        # each rank evaluates every world_size-th chunk; a rank left without one runs chunk 0 with
        # weight 0, so that it still knows the metric names and joins the all_sum below
        mine = [(chunk, 1.0) for chunk in chunks[self.rank::self.world_size]] or [(chunks[0], 0.0)]
        total_loss = total_weight = 0.0
        sums: dict[str, float] = {}
        self.guard.progress("evaluation", 0, len(mine))
        for done, (chunk, share) in enumerate(mine, 1):
            batch = self.method.collate([self.valid_examples[i] for i in chunk])
            for part in self.method.step_batches([batch]):  # GRPO: its rows in several passes
                loss_sum, weight, metrics = self.steps.evaluate(part)
                mx.eval(loss_sum, weight, metrics)
                total_loss += share * loss_sum.item()
                total_weight += share * weight.item()
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + share * v.item()
            self.guard.progress("evaluation", done, len(mine))
        self.model.train()
        if self.world_size > 1:
            totals = mx.distributed.all_sum(mx.array([total_loss, total_weight] + [sums[k] for k in sorted(sums)]))
            total_loss, total_weight, *rest = totals.tolist()
            sums = dict(zip(sorted(sums), rest))
        loss = total_loss / total_weight if total_weight else float("nan")
        record = {"loss": loss, "tokens": int(total_weight)}
        if self.method.token_loss and math.isfinite(loss):
            record["perplexity"] = math.exp(min(loss, 50.0))
        record.update({k: v / total_weight for k, v in sums.items()} if total_weight else {})
        return record
