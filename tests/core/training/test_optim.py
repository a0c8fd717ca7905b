"""trainer_core.training.optim: AdamW equals a numpy AdamW (both layouts: per array and joined into one vector,
bit-equal to each other); param groups; global-norm clipping."""

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx

from trainer_core.config import ParamGroup
from trainer_core.training.optim import AdamW, clip_factor, global_norm, group_multipliers


def numpy_adamw(params, grads_per_step, lrs, *, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, multipliers=None):
    """torch.optim.AdamW, written out: decoupled decay (not on 1-D params), bias correction."""
    params = {k: v.astype(np.float64).copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for t, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
        for k in params:
            g = grads[k].astype(np.float64)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat = m[k] / (1 - b1 ** t)
            v_hat = v[k] / (1 - b2 ** t)
            rate = lr * (multipliers or {}).get(k, 1.0)
            if params[k].ndim >= 2:
                params[k] *= 1 - rate * wd
            params[k] -= rate * m_hat / (np.sqrt(v_hat) + eps)
    return params, m, v


def random_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"layers.0.attn.weight": rng.normal(size=(4, 3)).astype(np.float32),
            "layers.0.norm.weight": rng.normal(size=(3,)).astype(np.float32),
            "layers.1.attn.weight": rng.normal(size=(3, 5)).astype(np.float32),
            "layers.1.attn.bias": rng.normal(size=(5,)).astype(np.float32)}


def run_adamw(params, grads_per_step, lrs, **kw):
    opt = AdamW({k: mx.array(v) for k, v in params.items()}, **kw)
    current = {k: mx.array(v) for k, v in params.items()}
    state = opt.state
    for grads, lr in zip(grads_per_step, lrs):
        current, state = opt.step(current, {k: mx.array(g) for k, g in grads.items()}, state,
                                  mx.array(lr, dtype=mx.float32))
    return {k: np.array(v) for k, v in current.items()}, opt.by_name(state)


LAYOUTS = pytest.mark.parametrize("joined", [False, True], ids=["per-array", "joined"])


def random_grads(params, steps=3, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(scale=0.1 * (s + 1), size=v.shape).astype(np.float32) for k, v in params.items()}
            for s in range(steps)]


@LAYOUTS
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_matches_numpy_over_three_steps(wd, joined):
    params = random_params()
    grads = random_grads(params)
    lrs = [1e-2, 5e-3, 2e-2]
    got, state = run_adamw(params, grads, lrs, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=wd, joined=joined)
    want, m, v = numpy_adamw(params, grads, lrs, b1=0.8, b2=0.95, eps=1e-6, wd=wd)
    assert state["t"].item() == 3
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(np.array(state["m"][k]), m[k], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.array(state["v"][k]), v[k], rtol=1e-5, atol=1e-9)
        assert not np.allclose(got[k], params[k])  # every parameter moved


@LAYOUTS
def test_no_weight_decay_on_one_dimensional_params(joined):
    params = random_params()
    zero = [{k: np.zeros_like(v) for k, v in params.items()}]  # zero gradient: only the decay acts
    got, _ = run_adamw(params, zero, [0.1], weight_decay=0.5, joined=joined)
    np.testing.assert_allclose(got["layers.0.attn.weight"], params["layers.0.attn.weight"] * 0.95, rtol=1e-6)
    np.testing.assert_allclose(got["layers.1.attn.weight"], params["layers.1.attn.weight"] * 0.95, rtol=1e-6)
    np.testing.assert_array_equal(got["layers.0.norm.weight"], params["layers.0.norm.weight"])
    np.testing.assert_array_equal(got["layers.1.attn.bias"], params["layers.1.attn.bias"])


@LAYOUTS
def test_param_group_multipliers_applied_by_pattern(joined):
    params = random_params()
    grads = random_grads(params)
    lrs = [1e-2] * 3
    groups = [ParamGroup("layers.0.*", 0.5), ParamGroup("attn.bias", 3.0), ParamGroup("layers.1.attn.weight", 0.0)]
    got, _ = run_adamw(params, grads, lrs, weight_decay=0.1, param_groups=groups, joined=joined)
    multipliers = {"layers.0.attn.weight": 0.5, "layers.0.norm.weight": 0.5, "layers.1.attn.bias": 3.0,
                   "layers.1.attn.weight": 0.0}
    want, _, _ = numpy_adamw(params, grads, lrs, wd=0.1, multipliers=multipliers)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_array_equal(got["layers.1.attn.weight"], params["layers.1.attn.weight"])  # frozen


def test_group_multipliers_last_match_wins_and_suffix_patterns():
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight",
             "model.layers.1.mlp.up_proj.weight", "model.embed_tokens.weight"]
    groups = [ParamGroup("layers.*", 0.5), ParamGroup("layers.1.mlp.*", 2.0), ParamGroup("*q_proj*", 0.1)]
    got = group_multipliers(names, groups)
    assert got == {"model.layers.0.self_attn.q_proj.weight": 0.1, "model.layers.1.self_attn.q_proj.weight": 0.1,
                   "model.layers.1.mlp.up_proj.weight": 2.0, "model.embed_tokens.weight": 1.0}


def clip_by_global_norm(grads, max_norm):
    """What the compiled step does with the two pieces (it folds the factor into the AdamW update)."""
    norm = global_norm(grads)
    factor = clip_factor(norm, max_norm)
    return {k: g * factor for k, g in grads.items()}, norm


def test_clip_by_global_norm_bounds_norm_and_returns_pre_clip_norm():
    grads = {"a": mx.array([3.0, 0.0]), "b": mx.array([[0.0, 4.0], [0.0, 0.0]])}  # global norm 5
    clipped, norm = clip_by_global_norm(grads, 1.0)
    assert norm.item() == pytest.approx(5.0)
    flat = np.concatenate([np.array(g).ravel() for g in clipped.values()])
    assert np.linalg.norm(flat) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(np.array(clipped["a"]), [0.6, 0.0], rtol=1e-5)  # direction kept
    np.testing.assert_allclose(np.array(clipped["b"]), [[0.0, 0.8], [0.0, 0.0]], rtol=1e-5)


@pytest.mark.parametrize("max_norm", [0.0, 10.0])
def test_clip_leaves_small_or_disabled_gradients_alone(max_norm):
    rng = np.random.default_rng(0)
    grads = {"a": mx.array(rng.normal(size=(6, 7)).astype(np.float32))}
    want_norm = np.linalg.norm(np.array(grads["a"]))
    clipped, norm = clip_by_global_norm(grads, max_norm)
    assert norm.item() == pytest.approx(want_norm, rel=1e-5)
    np.testing.assert_allclose(np.array(clipped["a"]), np.array(grads["a"]), rtol=1e-5)


def test_clip_random_gradients_many_arrays():
    rng = np.random.default_rng(5)
    grads = {f"p{i}": mx.array(rng.normal(scale=3, size=(i + 1, 4)).astype(np.float32)) for i in range(5)}
    want = np.sqrt(sum((np.array(g, dtype=np.float64) ** 2).sum() for g in grads.values()))
    clipped, norm = clip_by_global_norm(grads, 2.5)
    assert norm.item() == pytest.approx(want, rel=1e-5)
    got = np.sqrt(sum((np.array(g, dtype=np.float64) ** 2).sum() for g in clipped.values()))
    assert got <= 2.5 * (1 + 1e-5) and got == pytest.approx(2.5, rel=1e-4)


def test_global_norm_joined_and_per_array_agree_with_numpy(monkeypatch):
    import trainer_core.training.optim as optim
    rng = np.random.default_rng(11)
    grads = {f"p{i}": mx.array(rng.normal(scale=2, size=(i + 2, 3)).astype(np.float32)) for i in range(6)}
    grads["half"] = mx.array(rng.normal(size=(5, 4)).astype(np.float32)).astype(mx.bfloat16)  # mixed dtypes
    want = np.sqrt(sum((np.array(g.astype(mx.float32), dtype=np.float64) ** 2).sum() for g in grads.values()))
    joined = optim.global_norm(grads).item()
    monkeypatch.setattr(optim, "CONCAT_NORM_LIMIT", 0)  # the per-array path (full fine-tuning sizes)
    per_array = optim.global_norm(grads).item()
    assert joined == pytest.approx(want, rel=1e-5) and per_array == pytest.approx(want, rel=1e-5)


def snapshot(opt, current, state):
    named = opt.by_name(state)
    return ({k: np.array(v) for k, v in current.items()}, {k: np.array(v) for k, v in named["m"].items()},
            {k: np.array(v) for k, v in named["v"].items()}, named["t"].item())


@LAYOUTS
@pytest.mark.parametrize("bad_at", [0, 2])  # the very first update (t = 0) and a later one
@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_not_ok_update_leaves_everything_bit_identical(bad_at, poison, joined):
    params = random_params(4)
    grads = random_grads(params, steps=4, seed=6)
    opt = AdamW({k: mx.array(v) for k, v in params.items()}, weight_decay=0.1, joined=joined)
    current, state = {k: mx.array(v) for k, v in params.items()}, opt.state
    for s, g in enumerate(grads):
        bad = s == bad_at
        feed = {k: mx.array(np.full_like(v, poison) if bad else v) for k, v in g.items()}
        before = snapshot(opt, current, state)
        current, state = opt.step(current, feed, state, mx.array(1e-2), grad_scale=mx.array(0.5),
                                  ok=mx.array(not bad))
        after = snapshot(opt, current, state)
        if bad:
            for b, a in zip(before[:3], after[:3]):
                assert all(np.array_equal(b[k], a[k]) for k in b)  # bit for bit, no NaN anywhere
            assert after[3] == before[3]
        else:
            assert after[3] == before[3] + 1 and not np.array_equal(before[0]["layers.0.attn.weight"],
                                                                    after[0]["layers.0.attn.weight"])
    # the skipped update changed nothing: three good updates equal numpy AdamW over those three gradients
    good = [{k: v * 0.5 for k, v in g.items()} for s, g in enumerate(grads) if s != bad_at]
    want, _, _ = numpy_adamw(params, good, [1e-2] * 3, wd=0.1)
    for k in want:
        np.testing.assert_allclose(np.array(current[k]), want[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("groups", [(), (ParamGroup("layers.0.*", 0.5), ParamGroup("attn.bias", 3.0))])
def test_joined_layout_is_bit_equal_to_per_array_and_round_trips_by_name(groups):
    """The joined vector is a layout, not new maths: parameters and moments equal bit for bit (weight decay on the
    2-D arrays only, mixed group rates), and by_name / from_names carry the state between the layouts."""
    params = random_params(7)
    grads = random_grads(params, steps=3, seed=8)
    runs = {}
    for joined in (False, True):
        opt = AdamW({k: mx.array(v) for k, v in params.items()}, weight_decay=0.1, param_groups=groups, joined=joined)
        assert opt.joined is joined
        current, state = {k: mx.array(v) for k, v in params.items()}, opt.state
        for g in grads:
            current, state = opt.step(current, {k: mx.array(v) for k, v in g.items()}, state, mx.array(1e-2),
                                      grad_scale=mx.array(0.7), ok=mx.array(True))
        runs[joined] = (opt, snapshot(opt, current, state), state)
    (_, per_array, _), (opt, joined, state) = runs[False], runs[True]
    for a, b in zip(per_array[:3], joined[:3]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert per_array[3] == joined[3] == 3
    back = opt.from_names(opt.by_name(state))
    np.testing.assert_array_equal(np.array(back["m"]["*"]), np.array(state["m"]["*"]))
    assert list(state["m"]) == ["*"] and list(opt.by_name(state)["m"]) == list(params)


def test_joined_only_for_float32_sets_within_the_limit(monkeypatch):
    from trainer_core.training import optim
    f32 = {"a": mx.zeros((4, 4)), "b": mx.zeros((4,))}
    assert optim.joinable(f32) == (mx.default_device() == mx.gpu)  # MLX's CPU backend: per array by default
    monkeypatch.setattr(optim, "JOIN_ON_CPU", True)
    assert optim.joinable(f32)
    assert not optim.joinable({"a": mx.zeros((4, 4), dtype=mx.bfloat16), "b": mx.zeros((4,))})  # 16-bit: per array
    assert not optim.joinable({"a": mx.zeros((4, 4))})  # one array: nothing to join
    monkeypatch.setattr(optim, "JOIN_LIMIT", 16)
    assert not optim.joinable(f32)  # 20 elements > 16: big sets (full fine-tuning) are not copied into one


def test_the_loop_joins_adapters_and_keeps_full_fine_tuning_per_array(tiny_model_dir, tmp_path, monkeypatch):
    from tests.train_helpers import build
    from trainer_core.training import optim
    monkeypatch.setattr(optim, "JOIN_ON_CPU", True)  # as on a GPU
    lora = build(tiny_model_dir, tmp_path / "lora", method="lora", max_steps=1).loop.optimizer
    full = build(tiny_model_dir, tmp_path / "full", method="sft", max_steps=1).loop.optimizer
    assert lora.joined and list(lora.state["m"]) == ["*"]
    assert not full.joined and len(full.state["m"]) > 1  # the estimate counts no joined copies of full weights
