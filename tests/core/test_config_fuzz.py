"""Property tests for the config parser: RunConfig.from_dict, TOML files (RunConfig.load) and
`--set` strings (with_overrides). Any input ends in a RunConfig or a UserError, never another
exception; what validates also saves and reloads to the same config."""

from __future__ import annotations

import dataclasses
import math
import tomllib

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer_core.config import RunConfig
from trainer_core.errors import UserError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
DEFAULTS = RunConfig().to_dict()
SECTIONS = sorted(f.name for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(getattr(RunConfig(), f.name)))
TOP = sorted(k for k in DEFAULTS if k not in SECTIONS)  # data_columns is a dict-valued field, not a section
DOTTED = TOP + [f"{s}.{k}" for s in SECTIONS for k in DEFAULTS[s]] + ["param_groups.0.pattern"]

NAMES = st.sampled_from(TOP) | st.text(max_size=6)
FLOATS = st.floats() | st.sampled_from([0.0, -0.0, 1e-300, 1e308, math.inf, -math.inf, math.nan])
INTS = st.integers() | st.sampled_from([0, -1, 1, 2**63, -(2**63), 10**30])
# values as the form / a TOML file / JSON could give them (None only from Python callers)
SCALARS = (st.booleans() | INTS | FLOATS | st.text(max_size=10)
           | st.sampled_from(["lora", "sft", "dpo", "grpo", "diffusion", "full", "dora", "cosine", "true",
                              "exact_match", "", " ", "1e-3", "nan", "inf", "-1"]))
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                      max_leaves=8)
PARAM_GROUP = st.fixed_dictionaries({}, optional={"pattern": VALUES, "lr_multiplier": VALUES,
                                                  "extra": VALUES})


def section(name):
    return st.dictionaries(st.sampled_from(sorted(DEFAULTS[name])) | st.text(max_size=5), VALUES, max_size=5)


def config_dicts(with_none: bool):
    values = VALUES | st.none() if with_none else VALUES
    top = st.dictionaries(NAMES, values, max_size=8)
    sections = st.fixed_dictionaries({}, optional={**{s: section(s) | values for s in SECTIONS},
                                                   "param_groups": st.lists(PARAM_GROUP, max_size=2) | values})
    return st.tuples(top, sections).map(lambda t: {**t[0], **t[1]})


def default_of(name):
    head, _, leaf = name.partition(".")
    return DEFAULTS[head][leaf] if leaf else DEFAULTS[head]


def typed(name):
    """Values of the field's own type (often out of range), else anything."""
    default = default_of(name)
    if isinstance(default, bool):
        return st.booleans() | st.sampled_from(["true", "False", "yes"])
    if isinstance(default, int):
        return INTS | st.integers(-3, 10)
    if isinstance(default, float):
        return FLOATS | st.floats(-2, 2) | st.integers(-3, 10)
    if isinstance(default, str):
        return st.sampled_from(["lora", "sft", "dpo", "grpo", "diffusion", "full", "dora", "linear", "cosine",
                                "keep", "auto", "chat", "sigmoid", "ipo", "grpo", "dr_grpo", ""]) | st.text(max_size=8)
    if isinstance(default, dict):
        return st.dictionaries(st.sampled_from(["prompt", "completion", "answer", "x"]), st.text(max_size=6) | VALUES,
                               max_size=3)
    return st.lists(SCALARS, max_size=3) | st.lists(st.text(max_size=8), max_size=3) | st.text(max_size=12)


def near_valid(with_none: bool):
    """A valid config with 1-3 fields (top-level or in a section) set to random values."""
    values = VALUES | st.none() if with_none else VALUES
    change = st.sampled_from(DOTTED[:-1]).flatmap(lambda n: st.tuples(st.just(n), typed(n) | typed(n) | values))

    def build(changes):
        data = {**DEFAULTS, "data": "d.jsonl", **{s: dict(DEFAULTS[s]) for s in SECTIONS}}
        for name, value in changes:
            head, _, leaf = name.partition(".")
            if leaf and isinstance(data.get(head), dict):
                data[head][leaf] = value
            elif not leaf:
                data[head] = value
        return data

    return st.lists(change, min_size=1, max_size=3).map(build)


COUNTS: dict[str, int] = {}
OUTCOMES = {"valid": 0, "invalid": 0, "rejected": 0}


def check(make) -> None:
    """make() must return a RunConfig or raise UserError; a valid config round-trips through TOML."""
    try:
        config = make()
    except UserError as e:
        assert str(e).strip()
        OUTCOMES["rejected"] += 1
        return
    assert isinstance(config, RunConfig)
    problems = config.problems()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in problems.items())
    OUTCOMES["invalid" if problems else "valid"] += 1
    if problems:
        try:
            config.validate()
        except UserError as e:
            assert e.field in problems
        else:
            raise AssertionError("validate() passed with problems")
        return
    assert_sane(config)
    again = RunConfig.from_dict(tomllib.loads(config.to_toml()), source="round trip")
    assert again.to_dict() == config.to_dict()
    assert again.problems() == {}


def assert_sane(config: RunConfig) -> None:
    """What a valid config promises the loop: finite numbers, lists of the declared element type."""
    def walk(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            elif isinstance(value, float):
                assert math.isfinite(value), f"{prefix}{f.name} = {value}"
            elif isinstance(value, list) and f.name != "param_groups":
                kind = {"list[str]": str, "list[float]": (int, float)}[f.type]
                assert all(isinstance(v, kind) and not isinstance(v, bool) for v in value), f"{prefix}{f.name} = {value}"
                assert all(math.isfinite(v) for v in value if isinstance(v, float)), f"{prefix}{f.name} = {value}"
    walk(config)


def counted(name):
    COUNTS[name] = COUNTS.get(name, 0) + 1


@FUZZ
@given(data=config_dicts(with_none=True))
def test_from_dict(data):
    counted("from_dict")
    check(lambda: RunConfig.from_dict(data, source="fuzz"))


@FUZZ
@given(data=near_valid(with_none=True))
def test_from_dict_near_valid(data):
    counted("from_dict_near_valid")
    check(lambda: RunConfig.from_dict(data, source="fuzz"))


@FUZZ
@given(data=near_valid(with_none=False))
def test_toml_files_near_valid(tmp_path_factory, data):
    counted("toml_near_valid")
    path = tmp_path_factory.getbasetemp() / "fuzz_valid.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    check(lambda: RunConfig.load(path))


@FUZZ
@given(data=config_dicts(with_none=False), cut=st.integers(0, 400), junk=st.text(max_size=8))
def test_toml_files(tmp_path_factory, data, cut, junk):
    counted("toml")
    path = tmp_path_factory.getbasetemp() / "fuzz.toml"
    try:
        text = tomli_w.dumps(data)
    except (TypeError, ValueError):  # e.g. NaN keys tomli_w refuses: write text anyway
        text = repr(data)
    for body in (text, text[:cut] + junk + text[cut:]):
        path.write_text(body, encoding="utf-8")
        check(lambda: RunConfig.load(path))


@FUZZ
@given(raw=st.binary(max_size=200))
def test_toml_bytes(tmp_path_factory, raw):
    counted("toml_bytes")
    path = tmp_path_factory.getbasetemp() / "fuzz_bytes.toml"
    path.write_bytes(raw)
    check(lambda: RunConfig.load(path))


def _literal(value) -> str:
    try:
        return tomli_w.dumps({"v": value})[4:].strip()
    except (TypeError, ValueError):
        return str(value)


ASSIGNMENT = st.tuples(st.sampled_from(DOTTED) | st.text(max_size=12),
                       st.sampled_from(["=", "= ", "", "=="]),
                       VALUES.map(_literal) | st.text(max_size=12)).map(lambda t: t[0] + t[1] + t[2])


@FUZZ
@given(assignments=st.lists(ASSIGNMENT, max_size=4))
def test_set_strings(assignments):
    counted("set")
    check(lambda: RunConfig(data="d.jsonl").with_overrides(assignments))


TRAINING_FIELDS = ["method", "fine_tune_type", "batch_size", "gradient_accumulation_steps", "learning_rate",
                   "lr_schedule", "warmup_steps", "min_learning_rate", "polynomial_power", "max_grad_norm",
                   "weight_decay", "adam_beta1", "adam_beta2", "adam_eps", "max_seq_length", "mask_prompt", "seed",
                   "save_every", "eval_every", "val_fraction", "keep_last", "report_every", "max_bad_steps",
                   "lora.rank", "lora.alpha", "lora.dropout", "lora.num_layers", "lora.targets", "lora.dora",
                   "diffusion.schedule", "diffusion.schedule_power", "diffusion.eps", "diffusion.sft_mode",
                   "sample_prompts", "num_samples"]  # sample_max_tokens stays 4: a valid 4096 would take minutes
SMALL = {"batch_size": st.integers(0, 6), "gradient_accumulation_steps": st.integers(0, 3),
         "max_seq_length": st.integers(0, 80), "lora.rank": st.integers(-1, 9), "lora.num_layers": st.integers(-2, 3),
         "warmup_steps": st.integers(-1, 4), "method": st.sampled_from(["sft", "lora", "diffusion", "dpo", "grpo"]),
         "lora.targets": st.lists(st.sampled_from(["self_attn.q_proj", "mlp.down_proj", "q_proj", "nope", ""]),
                                  max_size=2),
         "learning_rate": st.floats(0, 1) | FLOATS, "max_grad_norm": st.floats(0, 5) | FLOATS,
         "num_samples": st.integers(-1, 3)}
TRAINING_CHANGES = st.lists(st.sampled_from(TRAINING_FIELDS).flatmap(
    lambda n: st.tuples(st.just(n), SMALL.get(n, typed(n)) | typed(n))), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(changes=TRAINING_CHANGES)
def test_fuzzed_configs_train_or_fail_clearly(tiny_model_dir, tmp_path_factory, changes):
    """A parsed config either trains 2 steps on the tiny model or stops with a UserError."""
    from tests.train_helpers import write_chat_data
    from trainer_core import runner

    counted("train")
    root = tmp_path_factory.getbasetemp()
    data = root / "fuzz_data"
    if not data.exists():
        write_chat_data(data, 12, 2)
    base = {**DEFAULTS, "model": str(tiny_model_dir), "data": str(data), "output_dir": str(root / "fuzz_runs"),
            "run_name": f"r{COUNTS['train']}", "max_steps": 2, "method": "lora", "sample_max_tokens": 4,
            **{s: dict(DEFAULTS[s]) for s in SECTIONS}}
    for name, value in changes:
        head, _, leaf = name.partition(".")
        if leaf:
            base[head][leaf] = value
        else:
            base[head] = value
    try:
        result = runner.train(RunConfig.from_dict(base, source="fuzz"))
    except UserError as e:
        assert str(e).strip()
        OUTCOMES["rejected"] += 1
        return
    OUTCOMES["valid"] += 1
    assert result.status == "finished" and result.step == 2


# ---- what the fuzzing found, pinned ------------------------------------------------------------

@pytest.mark.parametrize("changes, field", [
    ({"learning_rate": math.inf}, "learning_rate"),  # passed `>= 0`: a NaN checkpoint after one step
    ({"max_grad_norm": math.nan}, "max_grad_norm"),
    ({"lora": {"alpha": -math.inf}}, "lora.alpha"),
    ({"seed": -1}, "seed"),  # mx.random.seed(-1): TypeError at start
    ({"lora": {"targets": [False]}}, "lora.targets"),  # config.toml could not be written (TypeError)
    ({"grpo": {"reward_weights": ["high"]}}, "grpo.reward_weights"),
    ({"grpo": {"rewards": [1]}}, "grpo.rewards"),
])
def test_found_by_fuzzing_is_a_named_problem(changes, field):
    config = RunConfig.from_dict({"data": "d.jsonl", **changes})
    assert field in config.problems()
    with pytest.raises(UserError) as err:
        config.validate()
    assert err.value.field == field


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_quant_model_dir"])
def test_lora_rank_wider_than_the_layers_is_a_user_error(request, fixture):
    """rank 2**42 reached mlx as an OverflowError; any rank above the layer width is meaningless."""
    from trainer_core.models.adapters import prepare_for_training
    from trainer_core.models.loading import load_model

    model = load_model(str(request.getfixturevalue(fixture))).model
    config = RunConfig(data="d.jsonl")
    config.lora.rank = 65  # the tiny model's layers are 64 wide
    with pytest.raises(UserError, match="lora.rank is 65 .* at most 64") as err:
        prepare_for_training(model, config)
    assert err.value.field == "lora.rank"
    config.lora.rank = 64
    prepare_for_training(model, config)


def test_report_counts():
    """Runs last in this file: the number of generated cases (see the README's Reliability section)."""
    print(f"config fuzz cases: {COUNTS} = {sum(COUNTS.values())}; outcomes {OUTCOMES}")
