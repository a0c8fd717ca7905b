"""Kill a real `finetune` run with SIGKILL at random moments and check that nothing is lost.

Used by tests/core/training/test_crash_safety.py (a few kills) and bench/crash_kills.py (many).

One *chain* is one run folder: `finetune train ...` is started as a subprocess and
SIGKILLed at a random moment, then `finetune resume RUN_DIR` is started and killed
again, and so on; the last process of a chain is left to finish. After every kill:

- every `step-*` folder is complete: the four files, both safetensors load with
  finite values, trainer_state.json and adapter_config.json parse and the state's
  step is the folder's step (`check_checkpoint`);
- `CheckpointManager.latest()` is one of those complete folders;
- `read_metrics` reads metrics.jsonl (a torn last line is counted, never an error);
- a *copy* of the killed run folder is resumed in this process to the end and must
  give the same final weights (bit for bit) and the same train history
  (`read_metrics`, steps 1..N once each, same loss / grad_norm / learning_rate /
  tokens) as an uninterrupted run. So each kill is checked for an exact resume,
  while the chain itself also finishes through the real `finetune resume` CLI.

Kill moments: a quarter uniformly over a whole process lifetime (imports, data,
model load, training), the rest uniformly over the training phase once the process
has written its first metrics record, so most land among steps and checkpoint writes.
A kill that leaves a `.tmp-*` folder interrupted a checkpoint write.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
import numpy as np

from trainer_core import runner
from trainer_core.training.callbacks import read_metrics
from trainer_core.training.checkpoint import ADAPTER_CONFIG, OPTIMIZER, STATE, STEP_DIR, WEIGHTS, CheckpointManager

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("loss", "grad_norm", "learning_rate", "tokens")  # train-record fields that must match exactly


@dataclass
class RunSpec:
    """The training run every chain repeats (small enough for ~10 ms per step on a CPU)."""
    model: Path
    data: Path
    max_steps: int = 40
    save_every: int = 2
    # every setting the CLI would otherwise recommend is given (warm-up included), so an in-process
    # reference (runner.train, no recommendations) is the same run
    extra: tuple = ("--method", "lora", "--batch-size", "2", "--gradient-accumulation-steps", "2",
                    "--learning-rate", "1e-2", "--warmup-steps", "0", "--eval-every", "10", "--set", "lora.dropout=0.1",
                    "--set", "keep_last=2", "--set", "sample_max_tokens=4")  # killed while sampling too

    def train_args(self, out: Path, name: str) -> list[str]:
        return ["train", "--model", str(self.model), "--data", str(self.data), "--output-dir", str(out),
                "--run-name", name, "--max-steps", str(self.max_steps), "--save-every", str(self.save_every),
                *self.extra]


@dataclass
class Reference:
    weights: dict
    history: list[dict]
    startup_s: float  # spawn -> first metrics record
    training_s: float  # first metrics record -> train_end record


@dataclass
class KillReport:
    kills: int = 0  # SIGKILLs that hit a live process
    missed: int = 0  # the process had already exited when its kill came (not counted in kills)
    before_run_folder: int = 0  # killed before config.toml existed: nothing to resume, `train` again
    before_first_checkpoint: int = 0  # run folder but no checkpoint yet: resume starts at step 0
    mid_checkpoint_write: int = 0  # a .tmp-* checkpoint folder was left behind
    mid_retention: int = 0  # an .old-* folder (checkpoint being deleted/replaced) was left behind
    torn_metrics_lines: int = 0
    resumed_exactly: int = 0  # kills whose run folder resumed to the reference weights and history
    corrupt_checkpoints: int = 0  # step-* folders failing check_checkpoint (must stay 0)
    chains: int = 0
    chains_finished_exactly: int = 0  # chains whose last `finetune resume` finished equal to the reference
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {k: (v if k != "failures" else v[:20]) for k, v in self.__dict__.items()}


def _cli(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "trainer_core", *args], cwd=ROOT, env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _train_history(run_dir: Path) -> list[dict]:
    return [{k: r.get(k) for k in ("step", *COMPARED)}
            for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "train"]


def _final_weights(run_dir: Path) -> dict:
    return {k: np.array(v) for k, v in mx.load(str(run_dir / "final" / WEIGHTS)).items()}


def same_result(run_dir: Path, ref: Reference) -> str | None:
    """None when run_dir finished with the reference's final weights and train history, else why not."""
    if not (run_dir / "final" / WEIGHTS).is_file():
        return "no final/ weights"
    weights = _final_weights(run_dir)
    if weights.keys() != ref.weights.keys():
        return "final weights have other names"
    differ = [k for k in weights if not np.array_equal(weights[k], ref.weights[k])]
    if differ:
        worst = max(float(np.abs(weights[k] - ref.weights[k]).max()) for k in differ)
        return f"final weights differ in {len(differ)} tensors (max |diff| {worst:.3g})"
    history = _train_history(run_dir)
    if history != ref.history:
        steps = [h["step"] for h in history]
        return f"train history differs (steps {steps[:5]}...{steps[-5:]}, {len(steps)} records)"
    return None


def check_checkpoint(path: Path) -> list[str]:
    """Problems with one checkpoint folder (empty when complete and loadable)."""
    missing = [n for n in (WEIGHTS, ADAPTER_CONFIG, OPTIMIZER, STATE) if not (path / n).is_file()]
    if missing:
        return [f"{path.name}: missing {', '.join(missing)}"]
    problems = []
    for name in (WEIGHTS, OPTIMIZER):
        try:
            arrays = mx.load(str(path / name))
            mx.eval(arrays)
            bad = [k for k, v in arrays.items() if mx.issubdtype(v.dtype, mx.floating)
                   and not mx.isfinite(v).all().item()]
            if bad:
                problems.append(f"{path.name}/{name}: non-finite values in {bad[:3]}")
        except Exception as e:  # noqa: BLE001  (any failure to load is what we count)
            problems.append(f"{path.name}/{name}: {type(e).__name__}: {e}")
    for name in (STATE, ADAPTER_CONFIG):
        try:
            data = json.loads((path / name).read_text())
        except (OSError, ValueError) as e:
            problems.append(f"{path.name}/{name}: {e}")
            continue
        if name == STATE and data.get("step") != int(STEP_DIR.match(path.name).group(1)):
            problems.append(f"{path.name}: trainer_state step {data.get('step')}")
    return problems


def inspect_run(run_dir: Path, report: KillReport) -> None:
    """Check a killed run folder on disk; count leftovers, torn lines and corrupt checkpoints."""
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir():
        names = [p.name for p in checkpoints.iterdir()]
        report.mid_checkpoint_write += any(n.startswith(".tmp-") for n in names)
        report.mid_retention += any(n.startswith(".old-") for n in names)
        steps = [checkpoints / n for n in names if STEP_DIR.match(n)]
        for path in steps:
            problems = check_checkpoint(path)
            if problems:
                report.corrupt_checkpoints += 1
                report.failures.extend(problems)
        latest = CheckpointManager(checkpoints).latest()
        if steps and (latest is None or check_checkpoint(latest)):
            report.failures.append(f"{run_dir.name}: latest() is {latest}")
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        read_metrics(metrics)  # must not raise
        report.torn_metrics_lines += not metrics.read_bytes().endswith(b"\n") and _size(metrics) > 0


def reference_run(spec: RunSpec, work: Path, in_process: bool = False, startup_s: float = 3.0) -> Reference:
    """One uninterrupted run: the expected result and the timings kill moments are drawn from.

    A CLI run by default (its startup is measured); `in_process` trains here instead
    (faster; `startup_s` is then a guess). Both give the same weights bit for bit.
    """
    out = work / "reference"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    metrics = out / "ref" / "metrics.jsonl"
    if in_process:
        from trainer_core.cli import build_parser, config_from_args
        runner.train(config_from_args(build_parser().parse_args(spec.train_args(out, "ref"))))
        records = read_metrics(metrics)
        return Reference(_final_weights(out / "ref"), _train_history(out / "ref"), startup_s,
                         records[-1]["time"] - records[0]["time"])
    started = time.perf_counter()
    proc = _cli(spec.train_args(out, "ref"), out / "cli.log")
    first = None
    while proc.poll() is None:
        if first is None and _size(metrics) > 0:
            first = time.perf_counter()
        time.sleep(0.0005)
    if proc.returncode != 0:
        raise RuntimeError(f"reference run failed: {(out / 'cli.log').read_text()[-2000:]}")
    records = read_metrics(metrics)  # training: first record to train_end (not the interpreter's exit)
    return Reference(_final_weights(out / "ref"), _train_history(out / "ref"), (first or started) - started,
                     records[-1]["time"] - records[0]["time"])


def _kill_at_random(proc: subprocess.Popen, metrics: Path, ref: Reference, fraction_left: float,
                    rng: random.Random) -> bool:
    """SIGKILL `proc` at a random moment; False when it had exited first."""
    size_at_start = _size(metrics)
    if rng.random() < 0.25:  # anywhere in the process's life, startup included
        deadline = time.perf_counter() + rng.uniform(0, ref.startup_s + ref.training_s * fraction_left)
    else:  # during training: after this process's first record
        while proc.poll() is None and _size(metrics) <= size_at_start:
            time.sleep(0.0002)
        deadline = time.perf_counter() + rng.uniform(0, ref.training_s * fraction_left)
    while time.perf_counter() < deadline and proc.poll() is None:
        time.sleep(0.0002)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def _check_resume_of_copy(run_dir: Path, scratch: Path, ref: Reference, report: KillReport) -> None:
    """Resume a copy of the killed folder here, to the end, and compare with the reference."""
    if not (run_dir / "config.toml").is_file():
        report.before_run_folder += 1
        report.resumed_exactly += 1  # nothing was written: `finetune train` starts again from scratch
        return
    if CheckpointManager(run_dir / "checkpoints").latest() is None:
        report.before_first_checkpoint += 1
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(run_dir, scratch)
    try:
        runner.resume(scratch)
    except Exception as e:  # noqa: BLE001  (the failure is the finding)
        report.failures.append(f"resume of a copy after kill {report.kills}: {type(e).__name__}: {e}")
        return
    why = same_result(scratch, ref)
    if why:
        report.failures.append(f"resume after kill {report.kills}: {why}")
    else:
        report.resumed_exactly += 1


def kill_runs(spec: RunSpec, work: Path, kills: int, seed: int = 0, max_kills_per_chain: int = 6,
              vary_chains: bool = True, ref: Reference | None = None, progress=None) -> KillReport:
    """Send `kills` SIGKILLs to chains of `finetune train` / `finetune resume` processes.

    A chain takes 1..max_kills_per_chain kills (random) or exactly max_kills_per_chain
    (`vary_chains=False`) before its last process is left to finish.
    """
    rng = random.Random(seed)
    ref = ref or reference_run(spec, work)
    report = KillReport()
    out = work / "runs"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    sent = 0
    while sent < kills:
        report.chains += 1
        run_dir = out / f"chain{report.chains:03d}"
        chain_kills = min(kills - sent, rng.randint(1, max_kills_per_chain) if vary_chains else max_kills_per_chain)
        for i in range(chain_kills + 1):
            if (run_dir / "config.toml").is_file():
                latest = CheckpointManager(run_dir / "checkpoints").latest()
                done = int(STEP_DIR.match(latest.name).group(1)) if latest else 0
                args = ["resume", str(run_dir)]
            else:
                done, args = 0, spec.train_args(out, run_dir.name)
            proc = _cli(args, out / f"{run_dir.name}.log")
            if i == chain_kills:  # the last process of a chain finishes
                if proc.wait() != 0:
                    report.failures.append(f"{run_dir.name}: final {args[0]} exited {proc.returncode}: "
                                           f"{(out / f'{run_dir.name}.log').read_text()[-600:]}")
                elif (why := same_result(run_dir, ref)):
                    report.failures.append(f"{run_dir.name}: {why}")
                else:
                    report.chains_finished_exactly += 1
                break
            fraction_left = max(0.05, 1 - done / spec.max_steps)
            if not _kill_at_random(proc, run_dir / "metrics.jsonl", ref, fraction_left, rng):
                report.missed += 1
                continue
            sent += 1
            report.kills += 1
            inspect_run(run_dir, report)
            _check_resume_of_copy(run_dir, work / "scratch", ref, report)
            if progress:
                progress(report)
    shutil.rmtree(work / "scratch", ignore_errors=True)
    return report
