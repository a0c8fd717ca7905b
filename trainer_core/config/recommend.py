"""Recommended hyper-parameters for a situation: method x fine-tune type x model size x dataset size.

    recommended(method, fine_tune_type, num_parameters, train_examples, batch_size, accumulation, records)
        -> {dotted RunConfig field: value}

    fill_unset(config, unset, num_parameters, train_examples, world_size, records) -> {field: value put there}

The window applies these whenever the method, model or dataset changes (except to fields the user
edited) and `finetune train` starts from the same values for every field of RECOMMENDED that its
command line, --set or TOML left unset (runner.build_run(recommend=...), once the data is read and
the model's size known; the run's config.toml then records the values used), so both begin a run
alike. RunConfig's own defaults (DESIGN.md) stay what a RunConfig built in code gets. The numbers follow common practice rather than a search:
full fine-tuning ~1e-5 (smaller for big models), LoRA 2e-4 (1e-4 from 7B), DPO and GRPO an order of
magnitude below SFT, enough epochs for ~2-3 passes over a small dataset, warm-up ~3% of the steps.
`recommended_rewards(records)` picks GRPO rewards that give a signal on prompt/answer data.
"""

from __future__ import annotations

import re

NUMBER = re.compile(r"^\s*[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\s*$")
BIG_MODEL = 6e9  # from here on learning rates are halved

# (method, adapters?) -> peak learning rate for a model under BIG_MODEL parameters
LEARNING_RATES = {
    ("sft", False): 1e-5, ("sft", True): 2e-4,
    ("lora", False): 1e-5, ("lora", True): 2e-4,
    ("diffusion", False): 2.5e-5, ("diffusion", True): 1e-4,
    ("dpo", False): 1e-6, ("dpo", True): 5e-5,
    ("grpo", False): 1e-6, ("grpo", True): 2e-5,
}
WARMUP_FRACTION = 0.03
MAX_WARMUP = 100


def recommended_epochs(method: str, train_examples: int) -> int:
    """Passes over the data: 3 for a small set (< 1,000), 2 below 10,000, else 1; preference and RL: 1."""
    if method in ("dpo", "grpo"):
        return 1
    return 3 if train_examples < 1_000 else 2 if train_examples < 10_000 else 1


def recommended_rewards(records: list[dict]) -> tuple[list[str], list[float]]:
    """GRPO rewards for prompt/answer `records`: numeric_match when the answers are numbers, else
    normalized_match; plus xml_format (weight 0.2) when the prompts ask for <answer> tags."""
    answers = [str(r.get("answer")) for r in records if r.get("answer") not in (None, "")]
    prompts = " ".join(str(r.get("prompt", "")) for r in records)
    names, weights = [], []
    if answers:
        names.append("numeric_match" if all(NUMBER.match(a) for a in answers) else "normalized_match")
        weights.append(1.0)
    if "<answer>" in prompts:
        names.append("xml_format")
        weights.append(0.2)
    return names, (weights if any(w != 1.0 for w in weights) else [])


# gradient_checkpointing is decided from the memory estimate once the model and the tokenised data are known
# (training/memory.checkpointing_pays; runner._build for the CLI, the Setup tab for the window)
RECOMMENDED = ("learning_rate", "epochs", "max_steps", "warmup_steps", "grpo.rewards", "grpo.reward_weights",
               "gradient_checkpointing")
SAMPLE_RECORDS = 200  # the first train records the GRPO rewards are chosen from (the window's sample too)
RUN_LENGTH = ("epochs", "max_steps")  # chosen together: a user's either keeps the recommendation off both


def recommended(method: str, fine_tune_type: str, num_parameters: int | None, train_examples: int | None,
                batch_size: int = 4, accumulation: int = 1, records: list[dict] | None = None) -> dict:
    """The recommended values of the fields this situation decides (unknown model/data: fewer fields).

    `fine_tune_type` is the resolved type (lora / dora / full); `records` a sample of the training
    records (GRPO rewards)."""
    adapters = fine_tune_type in ("lora", "dora")
    rate = LEARNING_RATES.get((method, adapters), 2e-4 if adapters else 1e-5)
    if num_parameters is not None and num_parameters >= BIG_MODEL:
        rate /= 2
    values: dict = {"learning_rate": rate}
    if train_examples:
        epochs = recommended_epochs(method, train_examples)
        steps = epochs * max(1, train_examples // max(1, batch_size * accumulation))
        values.update({"epochs": epochs, "max_steps": 0,
                       "warmup_steps": min(MAX_WARMUP, round(WARMUP_FRACTION * steps))})
    if method == "grpo" and records:
        names, weights = recommended_rewards(records)
        if names:
            values.update({"grpo.rewards": names, "grpo.reward_weights": weights})
    return values


def fill_unset(config, unset, num_parameters: int | None, train_examples: int | None, world_size: int = 1,
               records: list[dict] | None = None) -> dict:
    """Put the recommended value into each field of `unset` (dotted names) on `config`; return what was put.
    Setting epochs or max_steps yourself keeps both (the run's length is yours)."""
    values = recommended(config.method, config.resolved_fine_tune_type, num_parameters, train_examples,
                         max(1, config.batch_size) * world_size, max(1, config.gradient_accumulation_steps), records)
    skip = set(RUN_LENGTH) if any(name not in unset for name in RUN_LENGTH) else set()
    applied = {}
    for name, value in values.items():
        if name not in unset or name in skip:
            continue
        section, _, leaf = name.rpartition(".")
        target = getattr(config, section) if section else config
        setattr(target, leaf, value)
        applied[name] = value
    return applied
