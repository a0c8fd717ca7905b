"""DPO: direct preference optimisation on (prompt, chosen, rejected) pairs.

For each pair the policy's and the reference's log-probabilities of both
responses are summed over the response tokens (preference_data.py decides
which tokens those are, exactly as SFT does); for `ipo` they are averaged over
them (the IPO paper's and TRL's choice: β keeps its meaning whatever the
response lengths, and long answers do not dominate). With
    h = (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)
the per-pair losses are (`[dpo] loss_type`):
    sigmoid  -(1 - ls) * log σ(β h) - ls * log σ(-β h)    DPO (Rafailov et al. 2023);
                                                          ls = label_smoothing > 0 is
                                                          conservative DPO (cDPO)
    ipo      (h - 1 / (2β))²                              IPO (Azar et al. 2023, eq. 17)
    hinge    max(0, 1 - β h)                              SLiC-style hinge
Rewards are β (logp - ref) per response. The loss returns sums over pairs and
weight = number of pairs, so the loop's per-step averages are per pair.

Dropout: the reference runs without dropout, so by default (`disable_dropout`, as TRL) the policy's
dropout layers (LoRA's `lora.dropout`) are turned off too; otherwise the implicit rewards are noise.

Reference model (never a second model object):
- LoRA / DoRA: the same model with its adapter layers swapped out for the
  base layers they wrap (`adapters_disabled`), for the length of one forward.
- full fine-tuning: the base weights, kept at `bind` time (MLX arrays are
  immutable, so holding them is the frozen copy), swapped in the same way.
Reference log-probs are computed eagerly in `collate` (outside the compiled
step, no gradient), or, with `[dpo] precompute_reference`, once over both
splits at `bind` and cached in `<run>/reference_logps.safetensors`, which a
resumed run reuses when its fingerprint (model + every pair's tokens) matches.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from trainer_core.errors import UserError
from trainer_core.training.head_loss import causal_token_nll
from trainer_core.training.losses import token_nll
from trainer_core.methods.base import Method
from trainer_core.methods.reference import adapter_modules, frozen_base, reference_model
from trainer_core.methods.preference_data import PreferencePair, collate_preference, tokenize_preference

LOSS_TYPES = ("sigmoid", "ipo", "hinge")
METRICS = ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy", "logps_chosen", "logps_rejected")
REFERENCE_FILE = "reference_logps.safetensors"


# ---- the loss ----------------------------------------------------------------------
def sequence_logps(model, input_ids: mx.array, target_mask: mx.array) -> mx.array:
    """Sum over each row of log p(token i | tokens < i) at positions where target_mask is True -> [rows] float32."""
    nll = causal_token_nll(model, input_ids[:, :-1], input_ids[:, 1:])  # the LM head fused, in chunks
    token_logps = -(token_nll(model(input_ids[:, :-1]), input_ids[:, 1:]) if nll is None else nll)
    return (token_logps * target_mask[:, 1:].astype(mx.float32)).sum(axis=-1)


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, *, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0):
    """Per-pair (losses, rewards_chosen, rewards_rejected), each [B]; formulas in the module doc."""
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * log_sigmoid(beta * h) - label_smoothing * log_sigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = mx.square(h - 1 / (2 * beta))
    elif loss_type == "hinge":
        losses = mx.maximum(1 - beta * h, 0.0)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    rewards_chosen = mx.stop_gradient(beta * chosen_ratio)
    rewards_rejected = mx.stop_gradient(beta * rejected_ratio)
    return losses, rewards_chosen, rewards_rejected


def log_sigmoid(x: mx.array) -> mx.array:
    """log σ(x), stable for large |x|."""
    return -mx.logaddexp(0.0, -x)


def disable_dropout(model) -> None:
    """Replace every dropout layer (LoRA's included) by a no-op one, as TRL's `disable_dropout_in_model`."""
    layers = [(name, nn.Dropout(0.0)) for name, module in model.named_modules() if isinstance(module, nn.Dropout)]
    if layers:
        model.update_modules(tree_unflatten(layers))


def fingerprint(model_name: str, pairs: dict[str, list[PreferencePair]]) -> str:
    """Hash of the model name and every pair's tokens and masks: what the cached log-probs depend on."""
    digest = hashlib.sha256(model_name.encode())
    for split in sorted(pairs):
        digest.update(f"|{split}:{len(pairs[split])}".encode())
        for p in pairs[split]:
            for seq in (p.chosen_ids, p.chosen_mask, p.rejected_ids, p.rejected_mask):
                digest.update(np.asarray(seq, dtype=np.int32).tobytes() + b";")
    return digest.hexdigest()


# ---- the method --------------------------------------------------------------------
class DPOMethod(Method):
    """DPO on preference data; see the module doc for the loss and the reference."""

    name = "dpo"
    metric_names = METRICS

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.pairs: dict[str, list[PreferencePair]] = {"train": [], "valid": []}
        self.frozen: dict | None = None  # full fine-tuning: the base weights
        self.cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # split -> (chosen, rejected) reference log-probs

    def prepare(self, splits):
        if splits.kind != "preference":
            raise UserError(
                f"dpo trains on preference data ({{\"prompt\", \"chosen\", \"rejected\"}} records), but "
                f"{splits.files.get('train')} holds {splits.kind} records. Use sft/lora for "
                f"{splits.kind} data or convert it to preference pairs.", field="data")
        cfg = self.config
        drop = cfg.long_rows == "drop"
        train, train_stats = tokenize_preference(splits.train, self.tokenizer, cfg.max_seq_length, "train", drop)
        valid, valid_stats = (tokenize_preference(splits.valid, self.tokenizer, cfg.max_seq_length, "valid", drop)
                              if splits.valid else ([], None))
        if not train:
            raise UserError(f"No preference pair in {splits.files.get('train')} keeps a response token after "
                            f"truncation to max_seq_length={cfg.max_seq_length} ({train_stats.empty} pairs dropped). "
                            "Raise max_seq_length or shorten the prompts.", field="max_seq_length")
        self.pairs = {"train": train, "valid": valid}
        return train, valid, {"train": train_stats, "valid": valid_stats}

    def bind(self, model, run_dir=None) -> None:
        """Turn the policy's dropout off (`disable_dropout`), keep the reference (base weights for full
        fine-tuning) and, with precompute_reference,
        load or compute the cached reference log-probs of both splits."""
        super().bind(model, run_dir)
        if self.config.dpo.disable_dropout:
            disable_dropout(model)
        self.frozen = None if adapter_modules(model) else frozen_base(model, self.config)
        if self.config.dpo.precompute_reference:
            self.cache = self._load_or_compute_cache()
            self.frozen = None  # every reference log-prob is cached: no weights to keep

    def reference_logps(self, batch: dict) -> mx.array:
        """Reference log-probs of every row of a collated batch -> [2B], evaluated, no gradient."""
        with reference_model(self.model, self.frozen) as reference:
            logps = mx.stop_gradient(sequence_logps(reference, batch["input_ids"], batch["target_mask"]))
            mx.eval(logps)
        return logps

    def _load_or_compute_cache(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        key = fingerprint(str(self.config.model), self.pairs)
        path = Path(self.run_dir) / REFERENCE_FILE if self.run_dir is not None else None
        if path is not None and path.is_file():
            arrays, metadata = mx.load(str(path), return_metadata=True)
            if metadata.get("fingerprint") == key:
                return {split: (np.array(arrays[f"{split}.chosen"]), np.array(arrays[f"{split}.rejected"]))
                        for split in self.pairs}
        cache = {}
        for split, pairs in self.pairs.items():
            chosen, rejected = np.zeros(len(pairs), np.float32), np.zeros(len(pairs), np.float32)
            order = sorted(range(len(pairs)), key=lambda i: pairs[i].length)
            size = self.config.batch_size
            for start in range(0, len(order), size):
                chunk = [pairs[i] for i in order[start:start + size]]
                logps = np.array(self.reference_logps(self._collate_inputs(chunk)))
                index = [p.index for p in chunk]
                chosen[index], rejected[index] = logps[:len(chunk)], logps[len(chunk):]
            cache[split] = (chosen, rejected)
        if path is not None:
            arrays = {f"{split}.{side}": mx.array(values) for split, pair in cache.items()
                      for side, values in zip(("chosen", "rejected"), pair)}
            tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # mlx keeps the .safetensors suffix
            mx.save_safetensors(str(tmp), arrays, metadata={"fingerprint": key})
            os.replace(tmp, path)
        return cache

    def _collate_inputs(self, pairs: list[PreferencePair]) -> dict:
        pad = self.tokenizer.pad_token_id
        return collate_preference(pairs, pad_id=pad if isinstance(pad, int) else 0)

    def length(self, example: PreferencePair) -> int:
        return example.length

    def collate(self, examples: list[PreferencePair]) -> dict:
        """Padded chosen+rejected rows and the pairs' reference log-probs (cached or computed now)."""
        batch = self._collate_inputs(examples)
        if all(p.split in self.cache for p in examples):
            reference_chosen = mx.array(np.array([self.cache[p.split][0][p.index] for p in examples]))
            reference_rejected = mx.array(np.array([self.cache[p.split][1][p.index] for p in examples]))
        else:
            logps = self.reference_logps(batch)
            reference_chosen, reference_rejected = logps[:len(examples)], logps[len(examples):]
        batch["reference_chosen"], batch["reference_rejected"] = reference_chosen, reference_rejected
        return batch

    def loss(self, model, batch):
        """(sum of per-pair losses, number of pairs, metric sums over pairs)."""
        dpo = self.config.dpo
        logps = sequence_logps(model, batch["input_ids"], batch["target_mask"])
        pairs = batch["reference_chosen"].shape[0]
        reference_chosen, reference_rejected = batch["reference_chosen"], batch["reference_rejected"]
        if dpo.loss_type == "ipo":  # IPO (and TRL's ipo) use the per-token average log-probability
            tokens = mx.maximum(batch["target_mask"][:, 1:].astype(mx.float32).sum(axis=-1), 1.0)
            logps = logps / tokens
            reference_chosen, reference_rejected = reference_chosen / tokens[:pairs], reference_rejected / tokens[pairs:]
        chosen, rejected = logps[:pairs], logps[pairs:]
        losses, rewards_chosen, rewards_rejected = dpo_loss(
            chosen, rejected, reference_chosen, reference_rejected,
            beta=dpo.beta, loss_type=dpo.loss_type, label_smoothing=dpo.label_smoothing)
        metrics = {
            "rewards_chosen": rewards_chosen.sum(),
            "rewards_rejected": rewards_rejected.sum(),
            "reward_margin": (rewards_chosen - rewards_rejected).sum(),
            "reward_accuracy": (rewards_chosen > rewards_rejected).astype(mx.float32).sum(),
            "logps_chosen": mx.stop_gradient(chosen).sum(),
            "logps_rejected": mx.stop_gradient(rejected).sum(),
        }
        return losses.sum(), mx.array(pairs, dtype=mx.float32), metrics

    def batch_tokens(self, examples, batch) -> dict:
        return {"input_tokens": sum(len(p.chosen_ids) + len(p.rejected_ids) for p in examples),
                "padded_tokens": int(batch["input_ids"].size),
                "trained_tokens": sum(sum(p.chosen_mask) + sum(p.rejected_mask) for p in examples)}
