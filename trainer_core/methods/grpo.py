"""GRPO: group-relative policy optimisation on prompt / answer data.

One rollout serves `num_iterations` (μ) consecutive optimizer steps (the loop
reuses the collated batch, `passes_per_batch`). Per rollout, in `collate` (eager):
1. Each of the B prompts gets G = `group_size` completions, sampled together
   with a KV cache by the current policy (rollout.py), which is the rollout's
   "old" policy π_old. The sampled ids are kept as they are (never decoded and
   re-encoded for training) with their log-probs under π_old.
2. Rewards (rewards.py): r_i = Σ_k w_k r_k(completion_i). Advantages within each
   group of G completions of one prompt:
       A_i = (r_i - mean(r)) / (std(r) + 1e-4)    (sample std over the group, as TRL's torch.std)
   or, with `scale_rewards = false` (Dr. GRPO), A_i = r_i - mean(r).
3. With β > 0: log-probs of the sampled tokens under the reference, once per
   rollout: the same model with its adapter layers swapped out for the base
   layers they wrap (LoRA / DoRA: no second copy), or, for full fine-tuning,
   the base weights kept at `bind` swapped in. β = 0 skips this pass.

The loss (compiled, each of the μ steps), for completion token t of sequence i:
    ρ_it = exp(logp_θ - logp_old)
    L_it = -min(ρ_it A_i, clip(ρ_it, 1 - ε, 1 + ε_high) A_i) + β k3_it
    k3_it = exp(ref - logp_θ) - (ref - logp_θ) - 1
(ε_high = ε unless `epsilon_high` > 0), aggregated (`loss_aggregation`) over
the N = B·G sequences, |o_i| = completion tokens of sequence i (its sampled
end-of-turn token included):
    grpo     (1/N) Σ_i (1/|o_i|) Σ_t L_it
    bnpo     Σ_it L_it / Σ_i |o_i|  (over every micro-batch of the step, as one batch)
    dr_grpo  Σ_it L_it / (N · max_completion_length)
Every log-prob is of softmax(logits / temperature). On a rollout's first step
the policy *is* π_old, so logp_old = stop_gradient(logp_θ): ρ = 1 exactly and
the gradient is REINFORCE with the group-mean baseline. Later steps (μ > 1)
use logp_old computed in `collate`, before the first update, by the same
forward as the loss (training mode, same 16-bit compute; as TRL), not the
sampler's (eval mode, KV cache, other precision path: up to 1.6% off), so ρ
departs from 1 only as the policy moves, and the clip acts.

For the loop, weight = N (sequences) and every metric is a sum over sequences:
reward_mean, reward_std (mean within-group std), reward/<name> (unweighted),
completion_length, and the per-token means kl (β > 0 only), clip_fraction
(tokens whose clip is active: ρ < 1 - ε with A < 0, or ρ > 1 + ε_high with
A > 0) and entropy (of the policy at the sampling temperature). With gradient
accumulation, bnpo and the per-token means span the step's micro-batches
(`step_batches` gives each their sequence and token totals); per process.

Every `sample_every` rollouts, the G completions of one prompt (prompt,
answer, completion, reward, per-function rewards, advantage) are appended to
`<run>/completions.jsonl`, one JSON object per completion, with the `step`
of the metrics.jsonl train record they belong to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import mlx.core as mx

from trainer_core.methods import rewards as reward_fns
from trainer_core.data.batching import padded_length
from trainer_core.data import Record, TokenizeStats, render_messages, where
from trainer_core.errors import UserError
from trainer_core.data.tokenize import build_prompt
from trainer_core.methods.base import Method
from trainer_core.models import precision
from trainer_core.methods.reference import adapter_modules, frozen_base, reference_model
from trainer_core.methods.rollout import SamplingSettings, policy_logprobs, sample_completions

ADVANTAGE_EPS = 1e-4
SAMPLES_FILE = "completions.jsonl"


@dataclass
class PromptExample:
    """One prompt, tokenised with the chat template's generation prompt; `record` is the raw JSON object."""

    prompt_ids: list[int]
    record: dict
    source: str = ""
    line: int = 0


# ---- the maths ---------------------------------------------------------------------
def group_advantages(rewards: np.ndarray, group_size: int, scale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(advantages [N], each row's group std [N]) for rewards [N] laid out group by group."""
    grouped = np.asarray(rewards, dtype=np.float64).reshape(-1, group_size)
    std = grouped.std(axis=1, ddof=1, keepdims=True)  # the sample std, as TRL (torch.std)
    advantages = grouped - grouped.mean(axis=1, keepdims=True)
    if scale:
        advantages = advantages / (std + ADVANTAGE_EPS)
    return advantages.reshape(-1).astype(np.float32), np.repeat(std[:, 0], group_size).astype(np.float32)


def policy_terms(model, batch: dict, *, temperature: float, epsilon_low: float, epsilon_high: float,
                 beta: float) -> dict:
    """Per-token terms [N, L-1] aligned with the targets input_ids[:, 1:]: logp, ratio,
    clipped (bool), entropy, kl (β > 0) and per_token_loss; see the module doc."""
    ids, mask = batch["input_ids"], batch["completion_mask"]
    logp, entropy = policy_logprobs(model, ids, temperature, entropy=True)
    old = mx.where(batch["first_pass"], mx.stop_gradient(logp), batch["old_logp"])
    ratio = mx.exp(mx.where(mask, logp - old, 0.0))  # masked before exp: padding never overflows
    advantages = batch["advantages"][:, None]
    clipped_ratio = mx.clip(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -mx.minimum(ratio * advantages, clipped_ratio * advantages)
    clipped = ((ratio < 1 - epsilon_low) & (advantages < 0)) | ((ratio > 1 + epsilon_high) & (advantages > 0))
    terms = {"logp": logp, "ratio": ratio, "clipped": clipped, "entropy": entropy}
    if beta:
        delta = mx.where(mask, batch["ref_logp"] - logp, 0.0)
        terms["kl"] = mx.exp(delta) - delta - 1
        per_token = per_token + beta * terms["kl"]
    terms["per_token_loss"] = per_token
    return terms


def aggregate(per_token: mx.array, mask: mx.array, kind: str, max_completion_length: int,
              step_share: mx.array | float = 1.0) -> mx.array:
    """This micro-batch's part of the sum over the step's sequences whose division by their number gives the
    `kind` loss (module doc); `step_share` = the step's sequences / its completion tokens (bnpo)."""
    mask = mask.astype(mx.float32)
    masked = per_token * mask
    if kind == "grpo":
        return (masked.sum(axis=-1) / mx.maximum(mask.sum(axis=-1), 1.0)).sum()
    if kind == "bnpo":
        return step_share * masked.sum()
    if kind == "dr_grpo":
        return masked.sum() / max_completion_length
    raise ValueError(f"unknown loss_aggregation {kind!r}")


# ---- the method ----------------------------------------------------------------------
class GRPOMethod(Method):
    """GRPO on prompt_answer data; see the module doc."""

    name = "grpo"

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        grpo = config.grpo
        self.rewards = reward_fns.load_rewards(grpo.rewards, grpo.reward_weights, grpo.reward_file)
        self.passes_per_batch = grpo.num_iterations
        self.sampling = SamplingSettings(grpo.max_completion_length, grpo.temperature, grpo.top_p, grpo.top_k)
        self.metric_names = ("reward_mean", "reward_std", *(f"reward/{f.name}" for f in self.rewards),
                             "completion_length", *(("kl",) if grpo.beta else ()), "clip_fraction", "entropy")
        self.frozen: dict | None = None
        self.samples: list[dict] = []  # the last rollout's first group, for completions.jsonl

    def bind(self, model, run_dir=None) -> None:
        super().bind(model, run_dir)
        if self.config.grpo.beta and not adapter_modules(model):
            self.frozen = frozen_base(model, self.config)

    # ---- data -----------------------------------------------------------------------
    def prepare(self, splits):
        if splits.kind != "prompt_answer":
            raise UserError(f"grpo trains on prompt_answer data ({{\"prompt\", \"answer\"}} records), but "
                            f"{splits.files.get('train')} holds {splits.kind} records. Use sft/lora/dpo for "
                            f"{splits.kind} data or convert it.", field="data")
        limit = self.config.max_seq_length - self.config.grpo.max_completion_length
        train, train_stats = self.tokenize_prompts(splits.train, limit)
        valid, valid_stats = self.tokenize_prompts(splits.valid, limit) if splits.valid else ([], None)
        if not train:
            raise UserError(f"No prompt in {splits.files.get('train')} fits: {train_stats.truncated} are longer than "
                            f"max_seq_length - grpo.max_completion_length = {limit} tokens. Raise max_seq_length "
                            "or lower grpo.max_completion_length.", field="max_seq_length")
        need = [f.name for f in self.rewards if f.needs_answer]
        for e in train + valid:
            if need and e.record.get("answer") is None:
                raise UserError(f"{where(e.source, e.line)}: no 'answer', but the reward {need[0]} compares "
                                "completions with it. Add answers or choose rewards that need none.",
                                field="grpo.rewards")
        return train, valid, {"train": train_stats, "valid": valid_stats}

    def tokenize_prompts(self, records, limit: int) -> tuple[list[PromptExample], TokenizeStats]:
        """Prompt ids with the generation prompt; prompts over `limit` tokens are skipped and
        counted in stats.truncated (a cut prompt would lose its question or its assistant header)."""
        examples, stats = [], TokenizeStats()
        for rec in records:
            rec = rec if isinstance(rec, Record) else Record(rec, "<records>", stats.records + 1)
            stats.records += 1
            try:
                ids = [int(t) for t in build_prompt(self.tokenizer, render_messages(rec.data, "prompt_answer"))]
            except Exception as e:  # jinja errors, raise_exception() in templates, ...
                raise UserError(f"{where(rec.source, rec.line)}: the model's chat template failed on this prompt "
                                f"({type(e).__name__}: {e}).") from None
            if not ids:
                stats.empty += 1
            elif len(ids) > limit:
                stats.truncated += 1
            else:
                examples.append(PromptExample(ids, rec.data, rec.source, rec.line))
                stats.lengths.append(len(ids))
                stats.total_tokens += len(ids)
        stats.examples = len(examples)
        return examples, stats

    def length(self, example) -> int:
        return len(example.prompt_ids)

    # ---- rollouts ---------------------------------------------------------------------
    def collate(self, examples):
        """Sample G completions per prompt, score them, and build the batch (module doc, steps 1-3)."""
        cfg, group = self.config.grpo, self.config.grpo.group_size
        prompts = [e.prompt_ids for e in examples for _ in range(group)]
        training = self.model.training
        self.model.eval()
        try:
            rollout = sample_completions(self.model, prompts, self.sampling, self.eos_ids(), pad_id=self.pad_id(),
                                         generation_batch_size=cfg.generation_batch_size,
                                         progress=lambda done, total: self.guard.progress("rollout", done, total))
        finally:
            self.model.train(training)
        mx.clear_cache()  # the sampler's KV cache and prefill logits are gone: give their buffers back before the update
        texts = [self.tokenizer.decode(c[:-1] if stopped else c)  # for the rewards only; training keeps the ids
                 for c, stopped in zip(rollout.completions, rollout.stopped)]
        records = [e.record for e in examples for _ in range(group)]
        parts = reward_fns.score(self.rewards, [
            {"completion": text, "answer": None if r.get("answer") is None else str(r["answer"]),
             "prompt": r["prompt"], "record": r, "completion_ids": list(ids), "completion_length": len(ids),
             "max_completion_length": cfg.max_completion_length}
            for text, r, ids in zip(texts, records, rollout.completions)])
        totals = reward_fns.total(self.rewards, parts)
        advantages, group_std = group_advantages(totals, group, cfg.scale_rewards)
        batch = rollout_batch(prompts, rollout.completions, rollout.logprobs, self.pad_id())
        batch.update(advantages=mx.array(advantages), rewards=mx.array(totals), group_std=mx.array(group_std),
                     reward_parts=mx.array(parts), first_pass=mx.array(True))
        if cfg.num_iterations > 1:
            batch["old_logp"] = self.old_logprobs(batch["input_ids"])
        if cfg.beta:
            batch["ref_logp"] = self.reference_logprobs(batch["input_ids"])
        self.samples = [{"prompt": records[i]["prompt"], "answer": records[i].get("answer"), "completion": texts[i],
                         "reward": float(totals[i]), "advantage": float(advantages[i]),
                         "rewards": {f.name: float(parts[i, k]) for k, f in enumerate(self.rewards)}}
                        for i in range(group)]
        return batch

    def old_logprobs(self, input_ids: mx.array) -> mx.array:
        """[N, L-1] log-probs of input_ids[:, 1:] under the policy before its first update, computed as the
        loss computes them (training mode, same precision path), not taken from the sampler (TRL does too)."""
        dtype = precision.compute_dtype(self.model, self.config.mixed_precision)
        size = self.config.grpo.generation_batch_size or input_ids.shape[0]
        parts = []
        with precision.computing_in(self.model, dtype):
            for i in range(0, input_ids.shape[0], size):
                logp, _ = policy_logprobs(self.model, input_ids[i:i + size], self.config.grpo.temperature)
                parts.append(mx.stop_gradient(logp))
                mx.eval(parts[-1])
        return mx.concatenate(parts)

    def reference_logprobs(self, input_ids: mx.array) -> mx.array:
        """[N, L-1] log-probs of input_ids[:, 1:] under the reference policy (no gradient)."""
        size = self.config.grpo.generation_batch_size or input_ids.shape[0]
        with reference_model(self.model, self.frozen):
            parts = []
            for i in range(0, input_ids.shape[0], size):
                parts.append(policy_logprobs(self.model, input_ids[i:i + size], self.config.grpo.temperature)[0])
                mx.eval(parts[-1])
        return mx.concatenate(parts)

    def step_batches(self, batches):
        """Split each collated batch into passes of at most `micro_batch_tokens` (rows x padded length), whose
        gradients the step accumulates (every loss term is a sum over rows, so the result is one pass's), and
        give each pass the step's sequences / completion tokens, so bnpo and the per-token metrics normalise
        over the whole step."""
        batches = [part for b in batches for part in split_rows(b, self.config.grpo.micro_batch_tokens)]
        tokens = sum(float(b["completion_mask"].sum().item()) for b in batches)
        sequences = sum(b["completion_mask"].shape[0] for b in batches)
        share = mx.array(sequences / max(tokens, 1.0), dtype=mx.float32)
        return [{**b, "step_share": share} for b in batches]

    def batch_for_step(self, batch, step):
        """First step of a rollout: ratio 1 by construction (and its samples are written); later steps:
        the recorded old log-probs."""
        first = step % self.passes_per_batch == 0
        every = self.config.grpo.sample_every
        if first and every and (step // self.passes_per_batch) % every == 0:
            self.write_samples(step + 1)
        return {**batch, "first_pass": mx.array(first)}

    def write_samples(self, step: int) -> None:
        if self.run_dir is None or not self.samples:
            return
        with open(self.run_dir / SAMPLES_FILE, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps({"step": step, **s}) + "\n" for s in self.samples))
        self.samples = []

    # ---- loss -------------------------------------------------------------------------
    def loss(self, model, batch):
        cfg = self.config.grpo
        terms = policy_terms(model, batch, temperature=cfg.temperature, epsilon_low=cfg.epsilon,
                             epsilon_high=cfg.epsilon_high or cfg.epsilon, beta=cfg.beta)
        mask = batch["completion_mask"]
        sequences = mask.shape[0]
        maskf = mask.astype(mx.float32)
        lengths = maskf.sum(axis=-1)
        share = batch.get("step_share", sequences / mx.maximum(lengths.sum(), 1.0))  # one micro-batch: itself
        loss_sum = aggregate(terms["per_token_loss"], mask, cfg.loss_aggregation, cfg.max_completion_length, share)

        def token_mean(x):  # per-token mean over the step's micro-batches, as a sum over sequences
            return share * (x.astype(mx.float32) * maskf).sum()

        metrics = {"reward_mean": batch["rewards"].sum(), "reward_std": batch["group_std"].sum(),
                   **{f"reward/{f.name}": batch["reward_parts"][:, k].sum() for k, f in enumerate(self.rewards)},
                   "completion_length": lengths.sum(), "clip_fraction": token_mean(terms["clipped"]),
                   "entropy": token_mean(terms["entropy"])}
        if cfg.beta:
            metrics["kl"] = token_mean(terms["kl"])
        return loss_sum, mx.array(sequences, dtype=mx.float32), metrics

    def batch_tokens(self, examples, batch) -> dict:
        completion = int(batch["completion_mask"].sum().item())
        prompt = sum(len(e.prompt_ids) for e in examples) * self.config.grpo.group_size
        return {"input_tokens": prompt + completion, "padded_tokens": int(batch["input_ids"].size),
                "trained_tokens": completion}

    # ---- tokenizer ----------------------------------------------------------------------
    def eos_ids(self) -> set[int]:
        ids = set(getattr(self.tokenizer, "eos_token_ids", None) or ())
        if getattr(self.tokenizer, "eos_token_id", None) is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if isinstance(pad, int) else 0


def split_rows(batch: dict, tokens: int) -> list[dict]:
    """`batch` cut into consecutive row ranges of at most `tokens` (rows x padded length; at least one row)
    each; per-row arrays are sliced, scalars shared. tokens = 0: the batch whole."""
    n, width = batch["input_ids"].shape
    rows = max(1, tokens // width) if tokens else n
    if rows >= n:
        return [batch]
    return [{k: v[i:i + rows] if v.ndim and v.shape[0] == n else v for k, v in batch.items()}
            for i in range(0, n, rows)]


def rollout_batch(prompts, completions, logprobs, pad_id: int = 0) -> dict:
    """{input_ids [N, L] int32 (prompt + completion, right-padded), and over the targets
    input_ids[:, 1:]: completion_mask [N, L-1] bool, old_logp [N, L-1] float32}."""
    width = padded_length(max(len(p) + len(c) for p, c in zip(prompts, completions)))
    n = len(prompts)
    ids = np.full((n, width), pad_id, dtype=np.int32)
    mask = np.zeros((n, width - 1), dtype=bool)
    old = np.zeros((n, width - 1), dtype=np.float32)
    for i, (p, c, lp) in enumerate(zip(prompts, completions, logprobs)):
        ids[i, :len(p) + len(c)] = list(p) + list(c)
        mask[i, len(p) - 1:len(p) - 1 + len(c)] = True
        old[i, len(p) - 1:len(p) - 1 + len(c)] = lp
    return {"input_ids": mx.array(ids), "completion_mask": mx.array(mask), "old_logp": mx.array(old)}
