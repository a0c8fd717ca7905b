"""Data-parallel runs, the parts testable in one process: disjoint shards, per-rank randomness, lost peers
explained, the launcher's environment, read-only checkpoint listing, a rank > 0 writing nothing.
Real multi-process runs: test_distributed.py."""

import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)

from tests.train_helpers import write_chat_data
from trainer_core import runner
from trainer_core.config import RunConfig
from trainer_core.data import batching
from trainer_core.distributed import ranks as distributed
from trainer_core.errors import UserError
from trainer_core.training import collectives
from trainer_core.training.checkpoint import CheckpointManager
from trainer_core.training.loop import step_seed


@pytest.mark.parametrize("n,batch_size,world_size", [(37, 2, 2), (64, 4, 2), (50, 3, 3), (9, 1, 4)])
def test_shards_are_disjoint_and_cover_every_full_global_batch(n, batch_size, world_size):
    lengths = [(i * 7) % 23 + 1 for i in range(n)]
    for epoch in (0, 1):
        shards = [batching.epoch_batches(lengths, batch_size, 5, epoch, world_size=world_size, rank=r)
                  for r in range(world_size)]
        assert len({len(s) for s in shards}) == 1  # every rank takes part in every step
        seen = [i for shard in shards for batch in shard for i in batch]
        assert len(seen) == len(set(seen))  # disjoint: no example on two ranks
        assert len(seen) == n // (batch_size * world_size) * batch_size * world_size  # only the ragged tail is left
        for step in range(len(shards[0])):  # each step's global batch is the one-process batch of N x b
            together = sorted(i for shard in shards for i in shard[step])
            assert all(len(shard[step]) == batch_size for shard in shards)
            if n % (batch_size * world_size) == 0:
                alone = batching.epoch_batches(lengths, batch_size * world_size, 5, epoch)
                assert together == sorted(alone[step])


def test_every_rank_draws_its_own_randomness_and_rank_zero_draws_the_single_process_numbers():
    assert step_seed(3, 10, 0) == step_seed(3, 10) == (3 * 1_000_003 + 10)
    seeds = {step_seed(3, step, rank) for step in range(50) for rank in range(8)}
    assert len(seeds) == 400


def test_peer_failures_are_recognised_and_explained():
    lost = RuntimeError("[ring] connection to a peer was lost")
    failure = collectives.rank_failure(lost, world_size=2, during="at step 7", checkpoint="runs/x/checkpoints/step-6")
    assert isinstance(failure, collectives.RankFailure) and isinstance(failure, UserError)
    assert "at step 7" in str(failure) and "step-6" in str(failure) and "2 processes" in str(failure)
    assert "Rank 0 writes the checkpoints" in str(collectives.rank_failure(lost, world_size=2, during="", rank=1))
    assert collectives.rank_failure(lost, world_size=1, during="") is None
    assert collectives.rank_failure(RuntimeError("shape mismatch"), world_size=2, during="") is None
    assert collectives.rank_failure(ValueError("[ring] x"), world_size=2, during="") is None


def test_launch_environment_is_read_without_joining(tmp_path, monkeypatch):
    for name in ("MLX_RANK", "MLX_HOSTFILE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MLX_WORLD_SIZE", "MLX_IBV_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched_size() == 0
    assert distributed.init() == distributed.World(1, 0)  # not launched: MLX is not asked
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text('[["127.0.0.1:1"], ["127.0.0.1:2"], ["127.0.0.1:3"]]')
    monkeypatch.setenv("MLX_RANK", "0")
    monkeypatch.setenv("MLX_HOSTFILE", str(hostfile))
    assert distributed.launched_size() == 3


def test_read_only_checkpoint_manager_touches_nothing(tmp_path):
    folder = tmp_path / "checkpoints"
    assert CheckpointManager(folder, writer=False).latest() is None and not folder.exists()
    (folder / ".tmp-step-000004-1-2").mkdir(parents=True)  # rank 0 writing a checkpoint right now
    CheckpointManager(folder, writer=False)
    assert (folder / ".tmp-step-000004-1-2").exists()
    CheckpointManager(folder)
    assert not (folder / ".tmp-step-000004-1-2").exists()


def test_a_rank_other_than_zero_writes_nothing(tiny_model_dir, tmp_path):
    """In this process the MLX group has one member, so collectives return their input."""
    data = write_chat_data(tmp_path / "data", n_train=8)
    config = RunConfig(method="lora", model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / "runs"),
                       max_steps=2, batch_size=2, save_every=1, eval_every=0)
    run = runner.build_run(config, world_size=2, rank=1)
    assert run.loop.checkpoints is None and run.loop.final_dir is None
    result = run.train()
    assert result.status == "finished" and result.final_dir is None
    assert not (tmp_path / "runs").exists()
