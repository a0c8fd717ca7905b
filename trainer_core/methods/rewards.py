"""GRPO reward functions: built-ins, user functions from a Python file, and their weighted sum.

A reward function scores one completion. It is called with keyword arguments
(only those its signature names, or all of them when it takes **kwargs):

    completion             str        the sampled completion, decoded, without its end-of-turn token
    answer                 str | None the record's "answer" (None when the record has none)
    prompt                 str | list the record's "prompt" (text, or a list of chat messages)
    record                 dict       the whole record, extra keys included
    completion_ids         list[int]  the sampled token ids (end-of-turn token included when sampled)
    completion_length      int        len(completion_ids)
    max_completion_length  int        the [grpo] limit

and returns a real number (bool counts as 0/1). The total reward of a
completion is sum_k weight_k * reward_k; each function's unweighted mean is
reported as the metric `reward/<name>`.

Built-ins (the answer-matching ones compare the text inside the last
<answer>...</answer> of the completion when there is one, else the whole completion):
    exact_match       1 if it equals the answer (surrounding whitespace ignored), else 0
    normalized_match  1 if equal after lower-casing and dropping punctuation, articles
                      (a, an, the) and extra whitespace, else 0
    numeric_match     1 if its last number equals the answer's last number (1e-6 relative;
                      "1,000" reads as 1000), else 0
    xml_format        1 for "<think>...</think> <answer>...</answer>" (the whole completion),
                      0.5 when only an <answer>...</answer> block is present, else 0
    length_penalty    -completion_length / max_completion_length, in [-1, 0)

User reward functions: `[grpo] reward_file = "path/to/rewards.py"` names a
Python file; `[grpo] rewards` names functions defined in it. The file is
imported and RUNS AS ORDINARY PYTHON CODE with your permissions when a run is
built (train and resume), so only name files you trust. A name that is both a
built-in and a function in the file is refused rather than silently picking one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import re
import string
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Callable

import numpy as np

from trainer_core.errors import UserError

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
FULL_FORMAT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
ARTICLES = re.compile(r"\b(a|an|the)\b")


def extract_answer(completion: str) -> str:
    """The text of the last <answer>...</answer> block, else the whole completion (stripped)."""
    found = ANSWER_TAG.findall(completion)
    return (found[-1] if found else completion).strip()


def normalize_text(text: str) -> str:
    """Lower-case, without punctuation, articles or repeated whitespace (SQuAD-style)."""
    text = "".join(" " if c in string.punctuation else c for c in text.lower())
    return " ".join(ARTICLES.sub(" ", text).split())


def last_number(text: str) -> float | None:
    found = NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def exact_match(completion: str, answer: str) -> float:
    return float(extract_answer(completion) == str(answer).strip())


def normalized_match(completion: str, answer: str) -> float:
    return float(normalize_text(extract_answer(completion)) == normalize_text(str(answer)))


def numeric_match(completion: str, answer: str) -> float:
    got, want = last_number(extract_answer(completion)), last_number(str(answer))
    return float(got is not None and want is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9))


def xml_format(completion: str) -> float:
    if FULL_FORMAT.fullmatch(completion):
        return 1.0
    return 0.5 if ANSWER_TAG.search(completion) else 0.0


def length_penalty(completion_length: int, max_completion_length: int) -> float:
    return -completion_length / max_completion_length


BUILTINS: dict[str, Callable] = {f.__name__: f for f in (exact_match, normalized_match, numeric_match,
                                                          xml_format, length_penalty)}
NEEDS_ANSWER = ("exact_match", "normalized_match", "numeric_match")
# name -> (what it scores, what each record must hold): the GUI's list of built-ins
DESCRIPTIONS = {
    "exact_match": ("1 if the answer (inside <answer> tags, else the whole completion) equals the record's",
                    "an \"answer\""),
    "normalized_match": ("1 if equal after lower-casing, dropping punctuation, articles and extra spaces",
                         "an \"answer\""),
    "numeric_match": ("1 if the completion's last number equals the answer's (1,000 = 1000)", "a numeric \"answer\""),
    "xml_format": ("1 for <think>…</think> <answer>…</answer>, 0.5 for an <answer> block alone",
                   "nothing (prompts should ask for the tags)"),
    "length_penalty": ("-length / max completion length: prefers short completions", "nothing"),
}


@dataclass
class RewardFunction:
    name: str
    fn: Callable
    weight: float
    origin: str  # "built-in" or the user file's path

    @property
    def needs_answer(self) -> bool:
        return self.origin == "built-in" and self.name in NEEDS_ANSWER

    def __call__(self, **arguments) -> float:
        """The reward for one completion; a raising or non-numeric function is a UserError."""
        params = inspect.signature(self.fn).parameters
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            arguments = {k: v for k, v in arguments.items() if k in params}
        try:
            value = self.fn(**arguments)
        except Exception as e:
            raise UserError(f"Reward function {self.name} ({self.origin}) raised {type(e).__name__}: {e} "
                            f"(completion {arguments.get('completion', '')[:80]!r}). Fix the function.",
                            field="grpo.rewards") from None
        if not isinstance(value, Real) or not math.isfinite(float(value)):
            raise UserError(f"Reward function {self.name} ({self.origin}) returned {value!r}; a reward must be "
                            "a finite number.", field="grpo.rewards")
        return float(value)


def load_user_module(path: str):
    """Import the user's reward file (this executes it) and return the module."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"grpo.reward_file {path} does not exist; name a Python file defining your reward "
                        "functions (relative paths are from the current folder).", field="grpo.reward_file")
    name = "finetune_user_rewards_" + hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"grpo.reward_file {file}: importing it failed with {type(e).__name__}: {e}.",
                        field="grpo.reward_file") from None
    return module


def load_rewards(names, weights=(), reward_file: str = "") -> list[RewardFunction]:
    """The reward functions `names` (built-in or from `reward_file`) with their weights (default 1)."""
    module = load_user_module(reward_file) if reward_file else None
    user = {k: v for k, v in vars(module).items() if callable(v) and not k.startswith("_")} if module else {}
    weights = list(weights) or [1.0] * len(names)
    functions = []
    for name, weight in zip(names, weights):
        if name in user and name in BUILTINS:
            raise UserError(f"grpo.rewards: {name} is both a built-in reward and a function in {reward_file}; "
                            "rename yours.", field="grpo.rewards")
        if name in user:
            functions.append(RewardFunction(name, user[name], float(weight), str(reward_file)))
        elif name in BUILTINS:
            functions.append(RewardFunction(name, BUILTINS[name], float(weight), "built-in"))
        else:
            mine = f"; functions in {reward_file}: {', '.join(sorted(user)) or 'none'}" if module else \
                " (or set grpo.reward_file to a Python file that defines it)"
            raise UserError(f"grpo.rewards: unknown reward {name!r}. Built-ins: {', '.join(BUILTINS)}{mine}.",
                            field="grpo.rewards")
    return functions


def score(functions: list[RewardFunction], samples: list[dict]) -> np.ndarray:
    """[len(samples), len(functions)] float32 unweighted rewards; each sample holds the keyword arguments."""
    return np.array([[f(**sample) for f in functions] for sample in samples], dtype=np.float32).reshape(
        len(samples), len(functions))


def total(functions: list[RewardFunction], parts: np.ndarray) -> np.ndarray:
    """The weighted sum of `score`'s columns -> [n] float32."""
    return parts @ np.array([f.weight for f in functions], dtype=np.float32)
