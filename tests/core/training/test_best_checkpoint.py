"""Which checkpoint is "best": the lowest eval loss, or for GRPO the highest eval reward (config.best_eval_metric)."""

import trainer_core  # noqa: F401  (OpenBLAS before MLX)

from app.checkpoints.checkpoint_list import list_checkpoints
from trainer_core import runner
from trainer_core.training.callbacks import read_metrics
from trainer_core.training.checkpoint import CheckpointManager
from tests.core.methods.test_grpo import run_config


def test_best_checkpoint_and_early_stopping_go_by_the_eval_reward(tmp_path, tiny_model_dir):
    """GRPO's eval loss is ~beta*KL; the best checkpoint (kept by retention, starred in the app) is the one with the
    highest eval reward_mean, as the eval records say."""
    config = run_config(tmp_path, tiny_model_dir, "best", max_steps=6)
    config.eval_every = config.save_every = 1
    config.val_fraction = 0.25
    runner.train(config)
    run_dir = tmp_path / "runs" / "best"
    evals = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "eval"}
    assert len(evals) == 6 and len({round(r["reward_mean"], 6) for r in evals.values()}) > 1  # rewards differ
    want = max(evals, key=lambda s: evals[s]["reward_mean"])
    best = CheckpointManager(run_dir / "checkpoints", writer=False).best()
    assert best is not None and best.name == f"step-{want:06d}"
    assert [r.step for r in list_checkpoints(run_dir) if r.best] == [want]
    # this run tells the two measures apart (so choosing by eval loss fails the asserts above)
    assert min(evals, key=lambda s: evals[s]["loss"]) != want
