"""SFT and LoRA: next-token loss on text / completions / chat data.

Both methods share this loss; they differ only in what trains (full weights
vs adapters), which `adapters.prepare_for_training` decides from the config.
"""

from __future__ import annotations

from trainer_core.data.batching import collate_sft
from trainer_core.data.token_cache import cached_tokenize_sft
from trainer_core.errors import UserError
from trainer_core.training.losses import sft_loss
from trainer_core.methods.base import Method

SFT_KINDS = ("text", "completions", "chat")


class SFTMethod(Method):
    name = "sft"
    token_loss = True

    def prepare(self, splits):
        if splits.kind not in SFT_KINDS:
            raise UserError(
                f"{self.config.method} trains on text, completions or chat data, but {splits.files.get('train')} "
                f"holds {splits.kind} records. Use the matching method (preference -> dpo, prompt_answer -> grpo) "
                "or convert the data.", field="data")
        cfg = self.config
        args = (self.tokenizer, splits.kind, cfg.max_seq_length, cfg.mask_prompt)
        options = {"last_turn_only": cfg.last_turn_only, "drop_long": cfg.long_rows == "drop"}
        train, train_stats = cached_tokenize_sft(splits.train, *args, **options)
        valid, valid_stats = cached_tokenize_sft(splits.valid, *args, **options) if splits.valid else ([], None)
        if not train:
            raise UserError(f"No training example in {splits.files.get('train')} has a trained token "
                            f"(0% of tokens would be trained; {train_stats.empty} empty after truncation to "
                            f"max_seq_length={cfg.max_seq_length}). Raise max_seq_length or check the data.", field="data")
        return train, valid, {"train": train_stats, "valid": valid_stats}

    def length(self, example) -> int:
        return len(example.input_ids)

    def collate(self, examples):
        pad = self.tokenizer.pad_token_id
        return collate_sft(examples, pad_id=pad if isinstance(pad, int) else 0)

    def loss(self, model, batch):
        return sft_loss(model, batch)
