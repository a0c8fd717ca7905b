"""Data-parallel runs (distributed.py): real 2-process runs on this machine over MLX's ring backend.

N ranks with batch b must equal one process with batch N x b (losses and weights), each rank must
see its own shard, only rank 0 writes, and a lost rank must end the run with a message (never a
hang) while the last checkpoint stays usable. Ranks are started either by `mlx.launch` (what users
run) or directly with the environment mlx.launch gives them (MLX_RANK + a ring host file), which
lets a test pick free ports, read each rank's exit status and kill one rank.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx

from tests.train_helpers import write_chat_data, write_jsonl
from trainer_core.distributed import launch
from trainer_core import runner
from trainer_core.training.callbacks import read_metrics
from trainer_core.training.checkpoint import CheckpointManager, read_state
from trainer_core.config import RunConfig
from trainer_core.errors import UserError

REPO = Path(__file__).resolve().parents[3]
LAUNCH = Path(sys.executable).with_name("mlx.launch")
TIMEOUT = 150  # seconds any multi-process run may take on a loaded 2-core machine before the test fails

PREFERENCES = [{"prompt": f"Question {i}: what is the capital of France?",
                "chosen": "The capital of France is Paris." + " Paris." * (i % 3),
                "rejected": ["The quick brown fox.", "The lazy dog is brown.", "Seven lighthouses.",
                             "Purple sand and legs."][i % 4] + " fox" * (i % 2)} for i in range(8)]

SETTINGS = ["--max-grad-norm", "1.0", "--learning-rate", "0.01", "--lr-schedule", "constant", "--eval-every", "0"]


# ---- launching ranks -------------------------------------------------------------------
def free_ports(count: int) -> list[int]:
    """`count` consecutive free TCP ports on 127.0.0.1 (mlx.launch -p takes the first)."""
    first = launch.free_port_block(count)
    if first is None:
        raise RuntimeError("no free ports")
    return list(range(first, first + count))


def environment(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLX_RANK", "MLX_HOSTFILE", "OMPI_", "PMI_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class Ranks:
    """`n` processes joined by the ring backend on localhost, as mlx.launch starts them."""

    def __init__(self, tmp: Path, argv: list, n: int = 2):
        hostfile = tmp / f"hosts-{time.monotonic_ns()}.json"
        hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in free_ports(n)]))
        self.logs = [tmp / f"rank{r}-{time.monotonic_ns()}.txt" for r in range(n)]
        self.processes = []
        for rank, log in enumerate(self.logs):
            with open(log, "w") as out:
                self.processes.append(subprocess.Popen(
                    [sys.executable, *map(str, argv)], cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, env=environment(MLX_RANK=str(rank), MLX_HOSTFILE=str(hostfile))))

    def wait(self, timeout: float = TIMEOUT) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in self.processes]
        finally:
            for p in self.processes:  # a hang is a failure: never leave a rank behind
                if p.poll() is None:
                    p.kill()
                    p.wait()

    def output(self, rank: int) -> str:
        return self.logs[rank].read_text()


def finetune(*args) -> list:
    return ["-m", "trainer_core", *args]


def weights(folder: Path) -> dict:
    return mx.load(str(folder / "adapters.safetensors"))


def assert_same_run(single: Path, multi: Path) -> None:
    """Same train losses at every step and the same final weights, to float tolerance."""
    one = [r for r in read_metrics(single / "metrics.jsonl") if r["type"] == "train"]
    two = [r for r in read_metrics(multi / "metrics.jsonl") if r["type"] == "train"]
    assert [r["step"] for r in one] == [r["step"] for r in two] and one
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([r["grad_norm"] for r in two], [r["grad_norm"] for r in one], rtol=1e-4, atol=1e-5)
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]
    a, b = weights(single / "final"), weights(multi / "final")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(np.array(b[key]), np.array(a[key]), rtol=1e-4, atol=1e-5, err_msg=key)
    moved = max(float(mx.abs(a[k]).max()) for k in a if "lora_b" in k)
    assert moved > 1e-3  # the adapters trained, so equal weights mean equal updates


# ---- collectives between two real processes ---------------------------------------------
HELPERS = """
import json, sys
import trainer_core
from trainer_core.distributed import ranks as distributed
from trainer_core.training import collectives
world = distributed.init()
out = {"world": [world.size, world.rank],
       "name": distributed.broadcast_text("chosen-by-rank-%d" % world.rank),
       "texts": distributed.gather_text("rank %d here" % world.rank),
       "stop_one": collectives.any_rank(world.rank == 1), "stop_none": collectives.any_rank(False),
       "counts": collectives.sum_ints([world.rank + 1, 3_000_000_000 * world.rank])}
distributed.agree({"config": {"batch": 2}, "data": "abc"})
try:
    distributed.agree({"config": {"batch": 2}, "data": "abc" if world.rank == 0 else "abd"})
except distributed.UserError as e:
    out["disagreement"] = str(e)
print("RESULT " + json.dumps(out), flush=True)
"""


def test_ranks_share_the_run_name_agree_and_stop_together(tmp_path):
    script = tmp_path / "helpers.py"
    script.write_text(HELPERS)
    ranks = Ranks(tmp_path, [script])
    assert ranks.wait(60) == [0, 0], ranks.output(0) + ranks.output(1)
    results = [json.loads(ranks.output(r).split("RESULT ", 1)[1]) for r in range(2)]
    for rank, out in enumerate(results):
        assert out["world"] == [2, rank]
        assert out["name"] == "chosen-by-rank-0"  # rank 0's choice (its clock), everywhere
        assert out["texts"] == ["rank 0 here", "rank 1 here"]
        assert out["stop_one"] is True and out["stop_none"] is False
        assert out["counts"] == [3, 3_000_000_000]
        assert "disagree on data: rank(s) 1 differ from rank 0" in out["disagreement"]


BLOCKED = """
import time
import trainer_core
from trainer_core import cli
from trainer_core.distributed import ranks as distributed
from trainer_core.training import collectives
from trainer_core.training.callbacks import StopFlag
world = distributed.init()
cli.install_stop_handlers(StopFlag())
cli.abort_when_blocked(grace_s=0.5)
if world.rank == 1:
    time.sleep(600)  # a peer that hangs: alive, never joins the next collective
print("WAITING", flush=True)
collectives.any_rank(False)
"""


def test_a_second_ctrl_c_ends_a_rank_blocked_by_a_hung_peer(tmp_path):
    script = tmp_path / "blocked.py"
    script.write_text(BLOCKED)
    ranks = Ranks(tmp_path, [script])
    try:
        deadline = time.monotonic() + 60
        while "WAITING" not in ranks.output(0):
            assert time.monotonic() < deadline and ranks.processes[0].poll() is None, ranks.output(0)
            time.sleep(0.05)
        time.sleep(0.3)  # inside MLX's wait now: Python signal handlers cannot run
        for _ in range(2):
            ranks.processes[0].send_signal(signal.SIGINT)
            time.sleep(0.2)
        assert ranks.processes[0].wait(timeout=30) == 130
        assert "Aborted while waiting for another process" in ranks.output(0)
    finally:
        ranks.processes[1].kill()
        ranks.wait(10)


def test_a_rank_that_never_joins_ends_the_wait_with_a_clear_exit(tmp_path):
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in free_ports(2)]))
    code = "import trainer_core; from trainer_core.distributed import ranks; ranks.init(join_timeout_s=2)"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=environment(MLX_RANK="0", MLX_HOSTFILE=str(hostfile)))
    assert done.returncode != 0 and time.monotonic() - started < 50
    assert "wait_for_all_processes_to_join" in done.stderr


# ---- whole runs -------------------------------------------------------------------------
def test_two_ranks_under_mlx_launch_equal_one_process_with_the_double_batch_lora(tiny_model_dir, tmp_path):
    data = write_chat_data(tmp_path / "data", n_train=16)
    common = ["--method", "lora", "--model", tiny_model_dir, "--data", data, "--output-dir", tmp_path / "runs",
              "--max-steps", 4, "--save-every", 0, *SETTINGS]
    config = RunConfig(method="lora", model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / "runs"),
                       run_name="single", max_steps=4, batch_size=4, save_every=0, eval_every=0,
                       learning_rate=0.01, lr_schedule="constant")
    runner.train(config)
    port = free_ports(2)[0]
    command = [LAUNCH, "-n", 2, "--backend", "ring", "-p", port, "--", sys.executable,
               *finetune("train", *common, "--batch-size", 2, "--run-name", "multi")]
    launched = subprocess.run(list(map(str, command)),
                              cwd=REPO, env=environment(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=TIMEOUT)
    output = launched.stdout + launched.stderr
    assert "exited with code" not in output and "Traceback" not in output, output
    assert "2 processes joined" in output and "2 per process x 2 processes x 1 accumulation = 4" in output
    assert output.count("step 4 ·") == 1  # progress from rank 0 only
    assert_same_run(tmp_path / "runs" / "single", tmp_path / "runs" / "multi")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["multi", "single"]  # one folder for 2 ranks
    assert read_state(tmp_path / "runs" / "multi" / "final")["world_size"] == 2


def test_two_ranks_equal_one_process_with_the_double_batch_dpo(tiny_model_dir, tmp_path):
    data = tmp_path / "prefs"
    write_jsonl(data / "train.jsonl", PREFERENCES)
    common = ["--method", "dpo", "--model", tiny_model_dir, "--data", data, "--output-dir", tmp_path / "runs",
              "--max-steps", 3, "--save-every", 0, *SETTINGS]
    ranks = Ranks(tmp_path, finetune("train", *common, "--batch-size", 2, "--run-name", "multi"))
    config = RunConfig(method="dpo", model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / "runs"),
                       run_name="single", max_steps=3, batch_size=4, save_every=0, eval_every=0,
                       learning_rate=0.01, lr_schedule="constant")
    runner.train(config)  # while the ranks start
    assert ranks.wait() == [0, 0], ranks.output(0) + ranks.output(1)
    assert_same_run(tmp_path / "runs" / "single", tmp_path / "runs" / "multi")
    one = [r for r in read_metrics(tmp_path / "runs" / "single" / "metrics.jsonl") if r["type"] == "train"]
    two = [r for r in read_metrics(tmp_path / "runs" / "multi" / "metrics.jsonl") if r["type"] == "train"]
    np.testing.assert_allclose([r["reward_margin"] for r in two], [r["reward_margin"] for r in one], atol=1e-5)


def test_killing_a_rank_ends_the_run_with_a_message_and_resume_needs_the_same_world(tiny_model_dir, tmp_path):
    data = write_chat_data(tmp_path / "data", n_train=16)
    run_dir = tmp_path / "runs" / "run"
    args = finetune("train", "--method", "lora", "--model", tiny_model_dir, "--data", data, "--output-dir",
                    tmp_path / "runs", "--run-name", "run", "--max-steps", 100_000, "--batch-size", 2,
                    "--save-every", 2, *SETTINGS)
    ranks = Ranks(tmp_path, args)
    deadline = time.monotonic() + TIMEOUT
    while not (run_dir / "checkpoints" / "step-000004").exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in ranks.processes), ranks.output(0)
        time.sleep(0.05)
    ranks.processes[1].send_signal(signal.SIGKILL)
    codes = ranks.wait(60)
    assert codes[0] == 3, ranks.output(0)
    said = ranks.output(0)
    assert "error: Lost another process of this 2-process run" in said and "Traceback" not in said
    assert f"is intact: continue with `finetune resume {run_dir}` started on the same 2 processes" in said
    assert said.count("Lost another process") == 1
    failure = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == "rank_failure"]
    assert len(failure) == 1 and "Lost another process" in failure[0]["message"]
    latest = CheckpointManager(run_dir / "checkpoints").latest()
    state = read_state(latest)
    assert state["world_size"] == 2 and latest.name == f"step-{state['step']:06d}" and state["step"] >= 4
    assert weights(latest).keys() and not list((run_dir / "checkpoints").glob(".tmp-*"))
    assert not (run_dir / "final").exists()  # a failed run does not look finished

    with pytest.raises(UserError, match="written by a run with 2 processes; resume it with the same number"):
        runner.resume(run_dir)  # one process
    earlier = CheckpointManager(run_dir / "checkpoints").list()[-2]  # --checkpoint: the Checkpoints tab's pick
    target = state["step"] + 2
    resumed = Ranks(tmp_path, finetune("resume", run_dir, "--max-steps", target, "--checkpoint", earlier))
    assert resumed.wait() == [0, 0], resumed.output(0) + resumed.output(1)
    assert f"Resumed from {earlier} at step {read_state(earlier)['step']}" in resumed.output(0)
    assert read_state(run_dir / "final")["step"] == target
    assert resumed.output(1).strip() == ""  # rank 1 reports nothing when all goes well


def test_a_stop_asked_of_one_rank_stops_every_rank_at_the_same_step(tiny_model_dir, tmp_path):
    data = write_chat_data(tmp_path / "data", n_train=16)
    run_dir = tmp_path / "runs" / "run"
    ranks = Ranks(tmp_path, finetune("train", "--method", "lora", "--model", tiny_model_dir, "--data", data,
                                     "--output-dir", tmp_path / "runs", "--run-name", "run", "--max-steps", 100_000,
                                     "--batch-size", 2, "--save-every", 2, *SETTINGS))
    deadline = time.monotonic() + TIMEOUT
    while not (run_dir / "checkpoints" / "step-000002").exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in ranks.processes), ranks.output(0)
        time.sleep(0.05)
    ranks.processes[1].send_signal(signal.SIGTERM)  # e.g. Ctrl-C reached one host only
    assert ranks.wait(60) == [0, 0], ranks.output(0) + ranks.output(1)
    stopped = CheckpointManager(run_dir / "checkpoints").latest()
    assert f"Stopped at step {read_state(stopped)['step']}/100000" in ranks.output(0)
    ended = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == "train_end"]
    assert ended[-1]["status"] == "stopped" and ended[-1]["step"] == read_state(stopped)["step"]


def test_launcher_output_says_who_joined_and_who_failed():
    from trainer_core.distributed import launch
    joined = ("Distributed run: 2 processes joined (rank 0 on mac-a, rank 1 on mac-b.local); global batch = "
              "2 per process x 2 processes x 1 accumulation = 4 examples per step")
    assert launch.parse_line(joined) == {"joined": [(0, "mac-a"), (1, "mac-b.local")]}
    assert launch.parse_line("\x1b[33m[WARN] Node with rank 1 exited with code -9 \x1b[0m") == {"exited": 1, "code": -9}
    assert launch.parse_line("error: Lost another process of this 2-process run") == {
        "error": "Lost another process of this 2-process run", "rank": 0}
    assert launch.parse_line("[rank 1] error: bad data")["rank"] == 1
    assert launch.parse_line("step 4 · epoch 1.00 · loss 5.07") is None
    argv = launch.launch_command("hosts.json", "ring", ["train", "--max-steps", 3], python="py", starting_port=4000)
    assert argv[3:] == ["--hostfile", "hosts.json", "--backend", "ring", "--starting-port", "4000",
                        "--env", f"FINETUNE_LAUNCH_HOSTFILE={Path('hosts.json').absolute()}",
                        "--env", "FINETUNE_LAUNCH_BACKEND=ring", "--",
                        "py", "-m", "trainer_core", "train", "--max-steps", "3"]
    with pytest.raises(UserError, match="Backend must be one of ring, mpi"):
        launch.launch_command("hosts.json", "tcp", [])


def test_rank_zero_records_the_launch_and_a_resumed_launch_is_judged_by_its_own_records(tmp_path, monkeypatch):
    from trainer_core.distributed import launch
    hosts = launch.expand_hosts([{"ssh": "localhost", "ips": ["127.0.0.1"]}], 2)
    hostfile = launch.write_hostfile(hosts, tmp_path / "hosts.json")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.delenv(launch.HOSTFILE_VARIABLE, raising=False)
    assert launch.record_launch(run_dir, 2) is None and launch.read_launch(run_dir) is None  # plain mlx.launch
    monkeypatch.setenv(launch.HOSTFILE_VARIABLE, str(hostfile))
    monkeypatch.setenv(launch.BACKEND_VARIABLE, "ring")
    assert launch.record_launch(run_dir, 3) is None  # not one entry per process of this run
    assert launch.record_launch(run_dir, 2) == run_dir / "launch.json"
    assert launch.read_launch(run_dir) == {"world_size": 2, "backend": "ring", "hosts": hosts}
    assert [p.name for p in run_dir.iterdir()] == ["launch.json"]  # written through a temporary, none left
    (run_dir / "launch.json").write_text('{"world_size": 2, "backend": "ring", "hosts": [')
    assert launch.read_launch(run_dir) is None
    assert launch._record_arguments(["--hostfile", "h.json", "--backend", "mpi"]) == [
        "--env", f"FINETUNE_LAUNCH_HOSTFILE={Path('h.json').absolute()}", "--env", "FINETUNE_LAUNCH_BACKEND=mpi"]
    assert launch._record_arguments(["-n", "2", "--backend", "ring"]) == []  # no host file: nothing to record

    metrics = run_dir / "metrics.jsonl"  # a stopped run, then a resume that ended without a word
    metrics.write_text(json.dumps({"type": "event", "step": 3, "event": "train_end", "status": "stopped",
                                   "total_steps": 8}) + "\n")
    since = metrics.stat().st_size
    with open(metrics, "a") as f:
        f.write(json.dumps({"type": "event", "step": 3, "event": "resumed"}) + "\n")
        f.write(json.dumps({"type": "train", "step": 4, "loss": 1.0}) + "\n")
    assert launch.Outcome().verdict(run_dir)[0] == "stopped"
    status, message = launch.Outcome().verdict(run_dir, since=since)
    assert status == "failed" and "rank 0 recorded no end of training" in message
