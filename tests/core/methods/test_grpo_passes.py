"""GRPO's update in passes over rows (`grpo.micro_batch_tokens`): the same step as one pass over every row,
and a run resumed inside a rollout cycle whose batches were split is exact."""

from __future__ import annotations

import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx

from tests.core.methods.test_grpo import run_config, train_records
from tests.helpers import train_losses
from tests.train_helpers import StopAfter
from trainer_core import runner
from trainer_core.methods.grpo import split_rows


def adapters(run_dir):
    return mx.load(str(run_dir / "final" / "adapters.safetensors"))


def test_split_rows_slices_rows_and_shares_scalars():
    batch = {"input_ids": mx.zeros((5, 8), dtype=mx.int32), "advantages": mx.arange(5), "first_pass": mx.array(True)}
    parts = split_rows(batch, 16)  # 2 rows of 8 tokens per pass
    assert [p["input_ids"].shape[0] for p in parts] == [2, 2, 1]
    assert [p["advantages"].tolist() for p in parts] == [[0, 1], [2, 3], [4]]
    assert all(p["first_pass"] is batch["first_pass"] for p in parts)
    assert split_rows(batch, 0) == [batch] and split_rows(batch, 4)[0]["input_ids"].shape[0] == 1


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dr_grpo"])
def test_passes_over_rows_equal_one_pass(tmp_path, tiny_model_dir, aggregation):
    whole = run_config(tmp_path, tiny_model_dir, "whole", max_steps=2, micro_batch_tokens=0,
                       loss_aggregation=aggregation, beta=0.04)
    split = run_config(tmp_path, tiny_model_dir, "split", max_steps=2, micro_batch_tokens=1,  # one row a pass
                       loss_aggregation=aggregation, beta=0.04)
    runner.train(whole)
    runner.train(split)
    a, b = train_losses(tmp_path / "runs" / "whole"), train_losses(tmp_path / "runs" / "split")
    assert any(abs(x) > 1e-6 for x in a)
    assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    norms = [[r["grad_norm"] for r in train_records(tmp_path / "runs" / name)] for name in ("whole", "split")]
    assert norms[1] == pytest.approx(norms[0], rel=1e-5)
    first, second = adapters(tmp_path / "runs" / "whole"), adapters(tmp_path / "runs" / "split")
    for k in first:  # Adam's first steps are ~ lr x sign(gradient): float sums in another order move tiny ones
        assert mx.abs(first[k] - second[k]).max().item() < 0.01 * 2 * split.learning_rate, k


def test_resume_with_split_batches_inside_a_cycle_is_exact(tmp_path, tiny_model_dir):
    def config(name):
        return run_config(tmp_path, tiny_model_dir, name, num_iterations=2, micro_batch_tokens=1)

    runner.train(config("full"))
    runner.train(config("half"), [StopAfter(1)])  # the checkpoint holds the cycle's split batches
    assert runner.resume(tmp_path / "runs" / "half").step == 4
    assert train_losses(tmp_path / "runs" / "half") == pytest.approx(train_losses(tmp_path / "runs" / "full"),
                                                                      rel=1e-6, abs=1e-7)
    first, second = adapters(tmp_path / "runs" / "full"), adapters(tmp_path / "runs" / "half")
    for k in first:
        assert mx.allclose(first[k], second[k], atol=1e-6).item(), k
