"""Masked diffusion fine-tuning, LLaDA-style (DESIGN.md method "diffusion").

Forward process, per sequence: t ~ U(eps, 1), mask probability p = p(t) from
`diffusion.schedule`, and each noisable token is replaced by [MASK] with
probability p, independently. The model sees the noisy sequence with
bidirectional attention and predicts every token; the loss is

    row (default):  loss_sum = Σ_rows (Σ over the row's masked tokens of CE / p) / the row's noisable tokens
                    weight = rows
    token:          loss_sum = Σ over masked tokens of CE / p                weight = noisable tokens

so the loop's `loss_sum / weight` is LLaDA's SFT objective (each row's sum of CE/t
over its masked answer tokens divided by its answer length, averaged over rows:
short answers count as much as long ones) or, with `normalization = "token"`,
the same sums divided by the batch's noisable tokens. On the default linear
schedule p = t and the weight is LLaDA's 1/t; on the others 1/p(t) keeps the
estimate unbiased (E[loss] = the mean token CE at noise level p) and the
schedule only decides how often each noise level is trained.
Metrics: `loss` and `mask_ratio` (masked / noisable tokens; per row, averaged, with `row`).

Noisable tokens: with `sft_mode` the response tokens (the SFT target mask
with prompt masking on, whatever `mask_prompt` says; for text data every token
after the first), without it every token. Rows are filled to the batch
width with EOS, LLaDA's SFT recipe: the fill is noisable and scored like the
response, which is how the sampler learns to end an answer of a fixed length
with EOS. So there is no padding and no attention mask to build.

Bidirectional attention: mlx-lm's `create_attention_mask(h, cache)` returns
`cache.make_mask(...)` when the first layer's cache has one. `bidirectional_logits`
calls the model with `cache=[BIDIRECTIONAL] * n_layers`: a stateless object with
`offset = 0`, `update_and_fetch(k, v) -> (k, v)` and `make_mask(...) -> None`,
so every layer attends both ways (sliding-window layers too) and nothing is
cached. Calling the model without a cache (every other method) stays causal.

[MASK]: `diffusion.mask_token` names a token of the vocabulary to use; empty
means the tokenizer's own mask token, and when it has none a row is added:
the embedding (and an untied lm_head) grow by one row initialised to the
mean row, id = the old row count. The added row is never a prediction (its
logit is cut off in the loss and the sampler). Full fine-tuning trains it
and saves it with the weights; with LoRA it stays the frozen mean row, which
`restore_mask_token` rebuilds exactly from the base at load time.
adapter_config.json records {"diffusion": {"mask_token_id", "added_mask_token"}}.

Randomness: training draws t and the mask inside `loss`, i.e. inside the
compiled step whose RNG is compiled state re-seeded from (seed, step) by the
loop, so a resumed run draws exactly what the uninterrupted run drew.
Evaluation (model in eval mode when `collate` runs) gets its noise in the
batch from a key hashed from the batch's tokens and the seed: the eval loss
is a fixed function of the weights, comparable across evaluations and
untouched by when (or whether) training was resumed.
"""

from __future__ import annotations

import math
import zlib

import mlx.core as mx
import numpy as np

from trainer_core.data.batching import padded_length
from trainer_core.errors import UserError
from trainer_core.training.losses import token_nll
from trainer_core.data.token_cache import cached_tokenize_sft
from trainer_core.methods.base import Method
from trainer_core.methods.sft import SFT_KINDS


def mask_probability(t: mx.array, schedule: str, power: float = 2.0) -> mx.array:
    """p(t) in [0, 1], increasing, p(1) = 1: linear t, cosine sin(pi t / 2) (MD4 / MaskGIT), polynomial t**power."""
    if schedule == "linear":
        return t
    if schedule == "cosine":
        return mx.sin(t * (math.pi / 2))
    if schedule == "polynomial":
        return t ** power
    raise ValueError(f"unknown diffusion schedule {schedule!r}")


def draw_noise(noisable: mx.array, schedule: str, eps: float, power: float = 2.0, key: mx.array | None = None):
    """(mask_prob [B] float32, masked [B, L] bool) for noisable [B, L]: t ~ U(eps, 1) per row,
    masked = noisable & (u < p(t)). Uses `key`, else MLX's global RNG."""
    t_key, u_key = mx.random.split(key) if key is not None else (None, None)
    rows, width = noisable.shape
    t = mx.random.uniform(low=eps, high=1.0, shape=(rows,), key=t_key)
    mask_prob = mask_probability(t, schedule, power)
    masked = (mx.random.uniform(shape=(rows, width), key=u_key) < mask_prob[:, None]) & noisable
    return mask_prob, masked


class _Bidirectional:
    """Per-layer "cache" that turns mlx-lm's causal mask off and stores nothing."""
    offset = 0

    def update_and_fetch(self, keys, values):
        return keys, values

    def make_mask(self, *args, **kwargs):
        return None


BIDIRECTIONAL = _Bidirectional()


def bidirectional_logits(model, ids: mx.array) -> mx.array:
    """Logits [B, L, V] of an mlx-lm model run with full (non-causal) attention."""
    return model(ids, cache=[BIDIRECTIONAL] * len(model.layers))


# ---- the [MASK] token ----------------------------------------------------------------

def resolve_mask_token(tokenizer, configured: str = "") -> int | None:
    """Id of the configured token, else of the tokenizer's mask token; None = add a row."""
    if configured:
        token_id = tokenizer.get_vocab().get(configured)
        if token_id is None:
            raise UserError(f"diffusion.mask_token {configured!r} is not a token of this model's vocabulary. "
                            "Name an existing (unused, e.g. reserved) token, or leave it empty to add a [MASK] row.",
                            field="diffusion.mask_token")
        return int(token_id)
    token_id = getattr(tokenizer, "mask_token_id", None)
    return int(token_id) if isinstance(token_id, int) else None


def _append_mean_row(layer) -> None:
    """Grow an Embedding / Linear (plain or quantized) by one output row: the mean row."""
    if hasattr(layer, "scales"):
        quant = {"group_size": layer.group_size, "bits": layer.bits}
        if getattr(layer, "mode", "affine") != "affine":
            quant["mode"] = layer.mode
        dense = mx.dequantize(layer.weight, layer.scales, layer.get("biases"), **quant)
        row = dense.astype(mx.float32).mean(axis=0, keepdims=True).astype(dense.dtype)
        weight, scales, *biases = mx.quantize(row, **quant)
        layer.weight = mx.concatenate([layer.weight, weight])
        layer.scales = mx.concatenate([layer.scales, scales])
        if biases and layer.get("biases") is not None:
            layer.biases = mx.concatenate([layer.biases, biases[0]])
    else:
        weight = layer.weight
        row = weight.astype(mx.float32).mean(axis=0, keepdims=True).astype(weight.dtype)
        layer.weight = mx.concatenate([weight, row])
    if "bias" in layer:
        layer.bias = mx.concatenate([layer.bias, mx.zeros((1,), dtype=layer.bias.dtype)])
    if hasattr(layer, "num_embeddings"):
        layer.num_embeddings += 1


def add_mask_row(model) -> int:
    """Add a [MASK] row to the input embedding and an untied lm_head; return its id."""
    embedding = getattr(getattr(model, "model", None), "embed_tokens", None)
    if embedding is None:
        raise UserError("This model architecture has no model.embed_tokens to add a [MASK] token to. Set "
                        "diffusion.mask_token to an unused token of its vocabulary.", field="diffusion.mask_token")
    mask_id = int(embedding.weight.shape[0])
    _append_mean_row(embedding)
    if getattr(model, "lm_head", None) is not None:
        _append_mean_row(model.lm_head)
    if hasattr(getattr(model, "args", None), "vocab_size"):
        model.args.vocab_size = mask_id + 1
    mx.eval(model.parameters())
    return mask_id


def check_token_id(model, token_id: int, what: str) -> None:
    """Refuse an id past the input embedding: MLX does not bounds-check `take`, so the forward pass
    would read past the table (NaN) and the embedding's gradient write past it (heap corruption)."""
    embedding = getattr(getattr(model, "model", None), "embed_tokens", None)
    rows = int(embedding.weight.shape[0]) if embedding is not None else None
    if rows is not None and not 0 <= token_id < rows:
        raise UserError(f"The {what} token is id {token_id} but this model's embedding has {rows} rows, so it has "
                        "no row for it. Set diffusion.mask_token to a token of the model's vocabulary.",
                        field="diffusion.mask_token")


def restore_mask_token(model, info: dict) -> None:
    """At load time, before a checkpoint's weights: re-add the row a diffusion run added."""
    if not info.get("added_mask_token"):
        return
    mask_id = add_mask_row(model)
    if mask_id != info["mask_token_id"]:
        raise UserError(f"The checkpoint's [MASK] token is id {info['mask_token_id']} but this model's embedding "
                        f"gives {mask_id}: load it with the base model it was trained from.", field="model")


# ---- the method -----------------------------------------------------------------------

class DiffusionMethod(Method):
    """Text / completions / chat data, masked-diffusion batches and loss (see the module doc)."""
    name = "diffusion"
    metric_names = ("mask_ratio",)
    token_loss = False  # an ELBO-weighted loss: exp(loss) is not a perplexity

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.mask_id = resolve_mask_token(tokenizer, config.diffusion.mask_token)
        self.added_mask_token = False
        eos, pad = getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "pad_token_id", None)
        self.fill_id = eos if isinstance(eos, int) else pad if isinstance(pad, int) else 0

    def prepare(self, splits):
        if splits.kind not in SFT_KINDS:
            raise UserError(f"diffusion trains on text, completions or chat data, but {splits.files.get('train')} "
                            f"holds {splits.kind} records. Use dpo for preference data, grpo for prompt_answer data, "
                            "or convert the data.", field="data")
        size = self.config.max_seq_length  # prompts are always marked (sft_mode decides whether they are noised)
        train, train_stats = cached_tokenize_sft(splits.train, self.tokenizer, splits.kind, size, mask_prompt=True)
        valid, valid_stats = (cached_tokenize_sft(splits.valid, self.tokenizer, splits.kind, size, mask_prompt=True)
                              if splits.valid else ([], None))
        if not train:
            raise UserError(f"No training example in {splits.files.get('train')} has a response token left after "
                            f"truncation to max_seq_length={size} ({train_stats.empty} empty). Raise max_seq_length "
                            "or check the data.", field="data")
        if self.mask_id is not None:
            for e in train + valid:
                if self.mask_id in e.input_ids:
                    raise UserError(f"{e.source}:{e.line}: this record contains the token used as [MASK] (id "
                                    f"{self.mask_id}), so masked and real tokens could not be told apart. Remove it "
                                    "or choose another diffusion.mask_token.", field="diffusion.mask_token")
        return train, valid, {"train": train_stats, "valid": valid_stats}

    def length(self, example) -> int:
        return len(example.input_ids)

    def bind(self, model, run_dir=None) -> None:
        super().bind(model, run_dir)
        if self.mask_id is None:
            self.mask_id = add_mask_row(model)
            self.added_mask_token = True
        check_token_id(model, self.mask_id, "[MASK]")

    def checkpoint_info(self) -> dict:
        return {"diffusion": {"mask_token_id": self.mask_id, "added_mask_token": self.added_mask_token}}

    def collate(self, examples):
        """{input_ids, noisable} (+ {mask_prob, masked} when the model is in eval mode)."""
        width = padded_length(max(len(e.input_ids) for e in examples), shifted=False)  # sees every position
        ids = np.full((len(examples), width), self.fill_id, dtype=np.int32)
        noisable = np.ones((len(examples), width), dtype=bool)
        for row, e in enumerate(examples):
            ids[row, :len(e.input_ids)] = e.input_ids
            if self.config.diffusion.sft_mode:
                noisable[row, :len(e.target_mask)] = e.target_mask
        batch = {"input_ids": mx.array(ids), "noisable": mx.array(noisable)}
        model = getattr(self, "model", None)
        if model is not None and not model.training:
            key = mx.random.key(zlib.crc32(ids.tobytes(), self.config.seed & 0xFFFFFFFF))
            batch["mask_prob"], batch["masked"] = self._noise(batch["noisable"], key)
        return batch

    def _noise(self, noisable, key=None):
        d = self.config.diffusion
        return draw_noise(noisable, d.schedule, d.eps, d.schedule_power, key)

    def batch_tokens(self, examples, batch) -> dict:
        width = batch["input_ids"].shape[1]
        real = sum(len(e.input_ids) for e in examples)
        fill = len(examples) * width - real
        noisable = sum(sum(e.target_mask) for e in examples) if self.config.diffusion.sft_mode else real
        return {"input_tokens": real, "padded_tokens": len(examples) * width, "trained_tokens": noisable + fill}

    def loss(self, model, batch):
        """(loss_sum, weight, {"mask_ratio": ...}) per `diffusion.normalization` (module doc)."""
        ids, noisable = batch["input_ids"], batch["noisable"]
        if "masked" in batch:
            mask_prob, masked = batch["mask_prob"], batch["masked"]
        else:
            mask_prob, masked = self._noise(noisable)
        logits = bidirectional_logits(model, mx.where(masked, self.mask_id, ids))
        if self.added_mask_token:
            logits = logits[..., :self.mask_id]
        token_losses = token_nll(logits, ids)
        weighted = mx.where(masked, token_losses / mask_prob[:, None], 0.0)
        masked_count = masked.astype(mx.float32)
        if self.config.diffusion.normalization == "token":
            return weighted.sum(), noisable.astype(mx.float32).sum(), {"mask_ratio": masked_count.sum()}
        row_tokens = mx.maximum(noisable.astype(mx.float32).sum(axis=-1), 1.0)
        return ((weighted.sum(axis=-1) / row_tokens).sum(), mx.array(ids.shape[0], dtype=mx.float32),
                {"mask_ratio": (masked_count.sum(axis=-1) / row_tokens).sum()})
