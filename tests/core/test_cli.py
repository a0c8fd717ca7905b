"""`python -m trainer_core`: train and generate on the tiny model; clean errors on bad input.

Every command runs in a subprocess with FINETUNE_STUDIO_HOME pointing into tmp, the way a
user's shell would run it (output piped, so plain progress lines instead of a bar).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
from mlx_lm.generate import generate as mlx_lm_generate
from mlx_lm.sample_utils import make_sampler
from mlx_lm.utils import load as mlx_lm_load

from trainer_core import cli
from trainer_core.training.callbacks import read_metrics
from trainer_core.config import RunConfig
from tests.train_helpers import chat_record, write_chat_data, write_jsonl

REPO = Path(__file__).resolve().parents[2]


def environment(home: Path) -> dict:
    env = dict(os.environ)
    env["FINETUNE_STUDIO_HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start(args, home: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer_core", *map(str, args)], cwd=REPO, env=environment(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout=120):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One CLI training run: a config.toml, flags overriding it, and --set."""
    tmp = tmp_path_factory.mktemp("cli-train")
    data = write_chat_data(tmp / "data", n_train=8, n_valid=2)
    config = tmp / "start.toml"
    config.write_text(f'method = "lora"\nmodel = "{tiny_model_dir}"\ndata = "{data}"\nmax_steps = 10\n'
                      'batch_size = 2\neval_every = 0\n[lora]\nrank = 4\n')
    home = tmp / "home"
    code, out, err = finish(start(["train", config, "--run-name", "cli-run", "--max-steps", 3, "--learning-rate",
                                   "0.01", "--save-every", 2, "--set", "lora.alpha=8", "--set", "mask_prompt=false"],
                                  home))
    return code, out, err, home / "runs" / "cli-run", tiny_model_dir


def test_train_exits_zero_and_writes_a_run_folder(trained):
    code, out, err, run_dir, _ = trained
    assert code == 0, err
    assert "Traceback" not in err
    config = RunConfig.load(run_dir / "config.toml")
    assert (config.max_steps, config.batch_size, config.learning_rate) == (3, 2, 0.01)  # flags beat the file
    assert (config.lora.rank, config.lora.alpha, config.mask_prompt) == (4, 8.0, False)  # file and --set
    train = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert (run_dir / "checkpoints" / "step-000002" / "adapters.safetensors").is_file()
    assert (run_dir / "final" / "adapters.safetensors").is_file()
    assert json.loads((run_dir / "final" / "trainer_state.json").read_text())["step"] == 3
    assert "step 3" in err  # plain progress lines when piped


def test_generate_with_adapter_matches_mlx_lm(trained):
    code, _, err, run_dir, model_dir = trained
    assert code == 0, err
    prompt = "What is the capital of France?"
    code, out, err = finish(start(["generate", "--adapter", run_dir / "final", "--prompt", prompt,
                                   "--max-tokens", 12], run_dir.parent.parent))
    assert code == 0, err
    assert "Traceback" not in err
    model, tokenizer = mlx_lm_load(str(model_dir), adapter_path=str(run_dir / "final"))
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    expected = mlx_lm_generate(model, tokenizer, ids, max_tokens=12, sampler=make_sampler(temp=0.0))
    assert out.endswith("\n")
    assert out[:-1] == expected


# ---- bad input: exit 2, one paragraph naming the culprit, no traceback, no run folder ------------------
#
# The first few run as real subprocesses; the rest call cli.main in-process (same code path
# after start-up, without paying the ~2 s import of mlx-lm per case).

BAD_CASES = {
    # name: (data tweak or extra args, text the message must contain, in a subprocess?)
    "missing_data": ("missing", "does-not-exist.jsonl", True),
    "malformed_line": ("malformed", "line 3", True),
    "batch_size_zero": (["--batch-size", "0"], "batch_size", True),
    "batch_size_not_int": (["--batch-size", "four"], "--batch-size", True),
    "bad_record_field": ("no_content", "line 2", False),
    "learning_rate_too_big": (["--learning-rate", "5"], "learning_rate", False),
    "bad_schedule": (["--lr-schedule", "cosin"], "--lr-schedule", False),
    "set_wrong_type": (["--set", "lora.rank=abc"], "lora.rank", False),
    "set_unknown_field": (["--set", "lora.rnk=4"], "lora.rnk", False),
    "bad_target": (["--set", 'lora.targets=["self_attn.qproj"]'], "lora.targets", False),
    "missing_model": ("no_model", "no-such-model", False),
    "bad_config_file": ("bad_toml", "broken.toml", False),
}
ARGPARSE_CASES = ("batch_size_not_int", "bad_schedule")  # argparse's own usage + error lines


def bad_args(name, tmp, model_dir):
    records = [chat_record(i) for i in range(5)]
    good = write_chat_data(tmp / "good", n_train=8)
    args = ["train", "--method", "lora", "--model", model_dir, "--data", good, "--output-dir", tmp / name / "out",
            "--run-name", "r", "--max-steps", 1]
    tweak = BAD_CASES[name][0]
    if tweak == "missing":
        args[args.index(good)] = tmp / "does-not-exist.jsonl"
    elif tweak == "malformed":
        malformed = tmp / "malformed.jsonl"
        malformed.write_text("".join(json.dumps(r) + "\n" for r in records[:2]) + '{"messages": [\n'
                             + json.dumps(records[3]) + "\n")
        args[args.index(good)] = malformed
    elif tweak == "no_content":
        args[args.index(good)] = write_jsonl(tmp / "no_content.jsonl", [
            records[0], {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}])
    elif tweak == "no_model":
        args[args.index(model_dir)] = tmp / "no-such-model"
    elif tweak == "bad_toml":
        (tmp / "broken.toml").write_text("batch_size = = 2\n")
        args.insert(1, tmp / "broken.toml")
    else:
        args += tweak
    return [str(a) for a in args]


@pytest.fixture(scope="module")
def bad_subprocess_runs(tiny_model_dir, tmp_path_factory):
    """Start the subprocess cases at once (they are independent), then collect them."""
    tmp = tmp_path_factory.mktemp("cli-bad")
    processes = {name: start(bad_args(name, tmp, tiny_model_dir), tmp / name / "home")
                 for name, case in BAD_CASES.items() if case[2]}
    return tmp, {name: finish(p) for name, p in processes.items()}


@pytest.fixture
def keep_signal_handlers():
    """cli.main installs SIGINT/SIGTERM handlers; give pytest its own back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def run_in_process(args, home, monkeypatch, capsys):
    monkeypatch.setenv("FINETUNE_STUDIO_HOME", str(home))
    try:
        code = cli.main(args)
    except SystemExit as e:  # argparse
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name", list(BAD_CASES))
def test_bad_input_exits_2_with_one_paragraph(name, request, tiny_model_dir, tmp_path, monkeypatch, capsys):
    if BAD_CASES[name][2]:
        tmp, results = request.getfixturevalue("bad_subprocess_runs")
        code, out, err = results[name]
    else:
        request.getfixturevalue("keep_signal_handlers")
        tmp = tmp_path
        code, out, err = run_in_process(bad_args(name, tmp, tiny_model_dir), tmp / name / "home", monkeypatch, capsys)
    needle = BAD_CASES[name][1]
    assert code == 2, err
    assert "Traceback" not in err
    message = err.strip()
    assert needle in message, message
    assert "\n\n" not in message  # one paragraph
    if name not in ARGPARSE_CASES:
        error_lines = [line for line in message.splitlines() if line.startswith("error:")]
        assert len(error_lines) == 1 and needle in error_lines[0], message
    out_dir, home = tmp / name / "out", tmp / name / "home"
    assert not (out_dir / "r").exists()  # nothing that looks like a run
    assert not out_dir.exists() or not any(out_dir.iterdir())
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_too_little_data_for_one_step_leaves_no_run_folder(tiny_model_dir, tmp_path, monkeypatch, capsys,
                                                          keep_signal_handlers):
    """Found only once the examples are counted (after the model loads): still no run folder."""
    data = write_chat_data(tmp_path / "data", n_train=3)
    args = ["train", "--method", "lora", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir",
            str(tmp_path / "out"), "--run-name", "r", "--batch-size", "1", "--gradient-accumulation-steps", "4"]
    code, _, err = run_in_process(args, tmp_path / "home", monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    assert "batch_size" in err and "gradient_accumulation_steps" in err
    assert not (tmp_path / "out" / "r").exists()
    # and the same command with workable settings then starts cleanly under that name
    code, _, err = run_in_process(args[:-4] + ["--batch-size", "1", "--max-steps", "1"], tmp_path / "home",
                                  monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "r" / "final").is_dir()
