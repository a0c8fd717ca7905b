"""trainer_core.config: defaults, TOML round trip, --set overrides, validation messages."""

import sys

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from trainer_core.config import LoraConfig, ParamGroup, RunConfig
from trainer_core.errors import UserError


def test_defaults_match_design():
    c = RunConfig()
    assert (c.batch_size, c.gradient_accumulation_steps, c.learning_rate, c.epochs, c.max_grad_norm,
            c.warmup_steps, c.weight_decay, c.max_steps) == (4, 1, 2e-4, 1, 1.0, 0, 0.0, 0)
    assert (c.lora.rank, c.lora.alpha, c.lora.dropout, c.lora.num_layers, c.lora.targets) == (8, 16.0, 0.0, -1, [])
    assert c.mask_prompt is True


@pytest.mark.parametrize("method,kind", [("sft", "full"), ("lora", "lora"), ("dpo", "lora"), ("grpo", "lora"),
                                         ("diffusion", "full")])
def test_fine_tune_type_defaults_by_method(method, kind):
    assert RunConfig(method=method).resolved_fine_tune_type == kind
    assert RunConfig(method=method, fine_tune_type="dora").resolved_fine_tune_type == "dora"


def test_lora_dora_flag_gives_dora():
    assert RunConfig(method="lora", lora=LoraConfig(dora=True)).resolved_fine_tune_type == "dora"


def custom_config():
    return RunConfig(method="sft", model="/models/x", data="/data/train.jsonl", run_name="r1", max_steps=17,
                     batch_size=2, learning_rate=1e-3, lr_schedule="polynomial", polynomial_power=2.0,
                     mask_prompt=False, param_groups=[ParamGroup("layers.0.*", 0.5), ParamGroup("*norm*", 0.0)],
                     lora=LoraConfig(rank=4, alpha=8.0, targets=["self_attn.q_proj", "self_attn.v_proj"], dora=True))


def test_toml_round_trip(tmp_path):
    config = custom_config()
    path = tmp_path / "config.toml"
    config.save(path)
    loaded = RunConfig.load(path)
    assert loaded == config
    assert loaded.to_dict() == config.to_dict()
    raw = tomllib.loads(path.read_text())  # complete: every field written out, defaults included
    assert raw == config.to_dict()
    assert raw["lora"]["targets"] == ["self_attn.q_proj", "self_attn.v_proj"]
    assert raw["param_groups"][1] == {"pattern": "*norm*", "lr_multiplier": 0.0}
    assert isinstance(loaded.param_groups[0], ParamGroup) and isinstance(loaded.lora, LoraConfig)


def test_default_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    RunConfig().save(path)
    assert RunConfig.load(path) == RunConfig()


def test_partial_toml_keeps_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('method = "lora"\nlearning_rate = 1\n[lora]\nrank = 32\n')
    c = RunConfig.load(path)
    assert c.learning_rate == 1.0 and isinstance(c.learning_rate, float)  # an int where a float is fine
    assert c.lora.rank == 32 and c.lora.alpha == 16.0 and c.batch_size == 4


def test_set_overrides_nested_lists_bools_strings():
    c = RunConfig().with_overrides([
        "lora.rank=16", "lora.dora=true", 'lora.targets=["self_attn.q_proj", "mlp.down_proj"]',
        "learning_rate=1e-3", "mask_prompt=false", "run_name=my run", "batch_size=8", "grpo.rewards=a,b",
        'param_groups=[{pattern = "layers.1.*", lr_multiplier = 0.25}]', "lora.alpha=32",
    ])
    assert c.lora.rank == 16 and c.lora.dora is True and c.lora.alpha == 32.0
    assert c.lora.targets == ["self_attn.q_proj", "mlp.down_proj"]
    assert c.learning_rate == 1e-3 and c.mask_prompt is False and c.batch_size == 8
    assert c.run_name == "my run"  # not TOML: taken as text
    assert c.grpo.rewards == ["a", "b"]  # comma list
    assert c.param_groups == [ParamGroup("layers.1.*", 0.25)]
    assert RunConfig().lora.rank == 8  # the original is untouched


def test_set_bool_as_word():
    assert RunConfig().with_overrides(["lora.dora=True"]).lora.dora is True


@pytest.mark.parametrize("assignment,field", [
    ("lora.rnk=4", "lora.rnk"), ("lerning_rate=0.1", "lerning_rate"), ("nosuch.rank=4", "nosuch.rank"),
    ("lora.rank.deep=4", "lora.rank.deep"),
])
def test_set_unknown_field_names_it(assignment, field):
    with pytest.raises(UserError) as info:
        RunConfig().with_overrides([assignment])
    assert field in str(info.value)
    assert info.value.field == field


@pytest.mark.parametrize("assignment,field", [
    ("lora.rank=abc", "lora.rank"), ("batch_size=2.5", "batch_size"), ("lora.dora=3", "lora.dora"),
    ("learning_rate=fast", "learning_rate"), ("mask_prompt=maybe", "mask_prompt"), ("lora.targets=3", "lora.targets"),
])
def test_set_wrong_type_names_the_field(assignment, field):
    with pytest.raises(UserError) as info:
        RunConfig().with_overrides([assignment])
    assert field in str(info.value) and info.value.field == field


def test_set_needs_key_value():
    with pytest.raises(UserError, match="section.key=value"):
        RunConfig().with_overrides(["lora.rank"])


def test_unknown_field_in_toml_names_file_and_field(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('batch_size = 2\n[lora]\nrank = 4\nranks = 8\n')
    with pytest.raises(UserError) as info:
        RunConfig.load(path)
    assert "lora.ranks" in str(info.value) and str(path) in str(info.value)
    assert info.value.field == "lora.ranks"


@pytest.mark.parametrize("text,field", [
    ('batch_size = "four"', "batch_size"), ("learning_rate = true", "learning_rate"),
    ("[lora]\ndora = 1", "lora.dora"), ('param_groups = [{pattern = "x", lr_multiplier = "high"}]',
                                         "param_groups.0.lr_multiplier"),
    ("lora = 3", "lora"), ('param_groups = "layers"', "param_groups"),
])
def test_wrong_type_in_toml_names_the_field(tmp_path, text, field):
    path = tmp_path / "c.toml"
    path.write_text(text + "\n")
    with pytest.raises(UserError) as info:
        RunConfig.load(path)
    assert field in str(info.value) and str(path) in str(info.value)
    assert info.value.field == field


def test_bad_toml_and_missing_file_name_the_path(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("batch_size = = 3\n")
    with pytest.raises(UserError, match="broken.toml"):
        RunConfig.load(path)
    with pytest.raises(UserError, match="nope.toml"):
        RunConfig.load(tmp_path / "nope.toml")


def test_problems_name_each_field():
    c = RunConfig(data="x.jsonl", batch_size=0, learning_rate=-1.0, lr_schedule="cosin", warmup_steps=-2,
                  lora=LoraConfig(rank=0, num_layers=0),
                  param_groups=[ParamGroup("", 1.0), ParamGroup("layers.*", -1.0)])
    problems = c.problems()
    for name in ("batch_size", "learning_rate", "lr_schedule", "warmup_steps", "lora.rank", "lora.num_layers",
                 "param_groups.0.pattern", "param_groups.1.lr_multiplier"):
        assert name in problems, name
        assert isinstance(problems[name], str) and problems[name]
    assert "model" not in problems and "epochs" not in problems
    with pytest.raises(UserError) as info:
        c.validate()
    message = str(info.value)
    assert all(name in message for name in problems)
    assert info.value.field in problems


def test_valid_config_has_no_problems():
    c = RunConfig(data="train.jsonl")
    assert c.problems() == {}
    assert c.validate() is c
    assert RunConfig(data="train.jsonl", learning_rate=0.0).problems() == {}  # lr 0 is valid (DESIGN.md)


@pytest.mark.parametrize("fields,name", [
    (dict(data=""), "data"), (dict(method="ppo"), "method"), (dict(fine_tune_type="qlora"), "fine_tune_type"),
    (dict(min_learning_rate=1.0), "min_learning_rate"), (dict(max_grad_norm=-1.0), "max_grad_norm"),
    (dict(max_steps=-1), "max_steps"), (dict(epochs=0), "epochs"), (dict(report_every=0), "report_every"),
    (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps"), (dict(val_fraction=1.0), "val_fraction"),
    (dict(fine_tune_type="full", lora=LoraConfig(dora=True)), "lora.dora"),
])
def test_single_problem(fields, name):
    base = dict(data="train.jsonl")
    base.update(fields)
    assert list(RunConfig(**base).problems()) == [name]


def test_epochs_zero_is_fine_with_max_steps():
    assert RunConfig(data="d", epochs=0, max_steps=10).problems() == {}
