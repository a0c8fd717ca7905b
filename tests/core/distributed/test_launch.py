"""launch.py: host files, how an mlx.launch run ended (mlx.launch itself exits 0 when a rank failed),
the stop file, and `python -m trainer_core.launch`, which turns a failed rank into a failing exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.core.distributed.test_distributed import REPO, environment, free_ports
from trainer_core.distributed import launch
from trainer_core.training.callbacks import MetricsWriter
from trainer_core.errors import UserError


def test_hosts_are_checked_for_the_backend_and_localhost_runs_without_ssh(tmp_path):
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps([{"ssh": "localhost", "ips": ["localhost"]}, {"ssh": "mac-b"}]))
    hosts = launch.expand_hosts(launch.read_hostfile(path), 2)
    assert [h["ssh"] for h in hosts] == ["127.0.0.1", "127.0.0.1", "mac-b", "mac-b"]
    assert hosts[0]["ips"] == ["127.0.0.1"]
    launch.check_backend(hosts, "mpi", path)
    with pytest.raises(UserError, match=r'host 3 \(mac-b\) has no "ips": the ring backend connects to IP'):
        launch.check_backend(hosts, "ring", path)
    assert launch.local_starting_port(hosts) is None  # mac-b's ports are not ours to check
    port = launch.local_starting_port(hosts[:2])
    assert port and 1024 <= port <= 65534


def write_events(run_dir, *events):
    writer = MetricsWriter(run_dir / "metrics.jsonl")
    for event in events:
        writer.on_event(event)


def test_the_verdict_needs_rank_zeros_end_of_training(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    outcome = launch.Outcome()
    for line in ["Distributed run: 2 processes joined (rank 0 on a, rank 1 on b); global batch = ...",
                 "step 1 · epoch 0.50 · loss 5.0", "[WARN] Node with rank 1 exited with code 0"]:
        outcome.feed(line)
    assert outcome.joined == [(0, "a"), (1, "b")]
    status, message = outcome.verdict(run_dir)  # every process exited 0, but training never ended
    assert status == "failed" and "ended without finishing: rank 0 recorded no end of training" in message
    assert outcome.verdict(run_dir, stopping=True)[1].startswith("Aborted: the processes ended without saving")

    write_events(run_dir, {"step": 3, "event": "train_end", "status": "finished", "total_steps": 3,
                           "final_dir": str(run_dir / "final")})
    status, end = outcome.verdict(run_dir)
    assert status == "finished" and end["step"] == 3 and end["final_dir"] == str(run_dir / "final")

    outcome.feed("\x1b[33m[WARN] Node with rank 1 exited with code -9\x1b[0m")
    outcome.feed("[WARN] Node with rank 0 exited with code -15")  # mlx.launch terminated it: not the cause
    write_events(run_dir, {"step": 4, "event": "rank_failure", "message": "Lost another process at step 4."})
    assert outcome.verdict(run_dir) == ("failed", "Lost another process at step 4. Rank 1 was killed (signal 9).")
    outcome.feed("[rank 1] error: Data file x.jsonl line 3: not JSON.")  # a rank's own words come first
    assert outcome.verdict(run_dir)[1].startswith("rank 1: Data file x.jsonl line 3: not JSON.")
    outcome.feed("error: Data file x.jsonl line 3: not JSON.")  # and rank 0's before the others'
    assert outcome.verdict(run_dir)[1].startswith("Data file x.jsonl line 3: not JSON.")


def test_a_rank_that_exits_badly_without_a_message_is_a_failure():
    outcome = launch.Outcome()
    outcome.feed("Segmentation fault")
    outcome.feed("[WARN] Node with rank 1 exited with code 139")
    assert outcome.verdict() == ("failed", "Process rank 1 exited with status 139 before training finished; "
                                           "see the log for its output.")
    outcome = launch.Outcome()
    outcome.feed("stopped at step 6/100")  # rank 0's last line when there is no run folder to read
    assert outcome.verdict() == ("stopped", {"status": "stopped", "step": 6, "total_steps": 100})
    outcome = launch.Outcome()
    outcome.feed("-c: error: The ring backend requires IPs to be provided instead of hostnames")
    assert outcome.verdict()[1] == "mlx.launch: The ring backend requires IPs to be provided instead of hostnames"
    assert launch.parse_line("finetune train: error: argument --method: invalid choice: 'nope'") == {
        "error": "finetune train: argument --method: invalid choice: 'nope'", "rank": 0}


def test_the_stop_file_asks_the_loop_to_stop(tmp_path, monkeypatch):
    monkeypatch.setenv(launch.STOP_FILE_VARIABLE, str(tmp_path / "stop"))
    stop = launch.StopFile()
    assert not stop.should_stop()
    (tmp_path / "stop").touch()
    assert stop.should_stop()
    monkeypatch.delenv(launch.STOP_FILE_VARIABLE)
    assert not launch.StopFile().should_stop()
    argv = launch.launch_command("h.json", "ring", ["train"], python="py", stop_file=tmp_path / "stop")
    assert argv[argv.index("--env") + 1] == f"FINETUNE_STOP_FILE={tmp_path / 'stop'}"


def test_the_terminal_launcher_exits_non_zero_when_a_rank_fails(tmp_path, tiny_model_dir):
    """mlx.launch would exit 0 here; `python -m trainer_core.launch` says what failed and exits 1."""
    hostfile = launch.write_hostfile([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2, tmp_path / "hosts.json")
    done = subprocess.run(
        [sys.executable, "-m", "trainer_core.launch", "--hostfile", hostfile, "--backend", "ring", "--starting-port",
         str(free_ports(2)[0]), "--", "train", "--method", "lora", "--model", tiny_model_dir, "--data",
         tmp_path / "missing", "--output-dir", tmp_path / "runs", "--max-steps", "2"],
        cwd=REPO, env=environment(), capture_output=True, text=True, timeout=150)
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(tmp_path / "missing") in last and "Traceback" not in done.stdout
    assert not list((tmp_path / "runs").glob("*/config.toml"))  # no run left behind
