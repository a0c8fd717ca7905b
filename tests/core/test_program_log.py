"""The program log (trainer_core/logging_setup.py) and the user folders it lives in: rotation, uncaught
exceptions, platformdirs locations, the CLI writing it, and "Reveal Logs" opening its folder (issue 13)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from trainer_core import logging_setup, paths

PY = sys.executable


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook, threading.excepthook)
    yield
    for handler in root.handlers[:]:
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(saved[1])
    sys.excepthook, threading.excepthook = saved[2], saved[3]
    logging.captureWarnings(False)


def test_log_file_rotates_under_the_log_dir(tmp_path, monkeypatch, restore_logging):
    monkeypatch.setenv("FINETUNE_STUDIO_HOME", str(tmp_path / "home"))
    path = logging_setup.setup_logging("test-program")
    assert path == paths.log_dir() / "fine-tune-studio.log" == tmp_path / "home" / "logs" / "fine-tune-studio.log"
    logging_setup.setup_logging("test-program")  # a second call replaces, never duplicates
    ours = [h for h in logging.getLogger().handlers if isinstance(h, logging.handlers.RotatingFileHandler)
            and Path(h.baseFilename) == path]
    assert len(ours) == 1 and ours[0].maxBytes > 0 and ours[0].backupCount > 0
    logging.getLogger("trainer_core.somewhere").info("a line for the bug report")
    text = path.read_text(encoding="utf-8")
    assert "test-program started: Fine-Tune Studio" in text and "a line for the bug report" in text


def test_uncaught_exceptions_reach_the_log(tmp_path):
    env = {**os.environ, "FINETUNE_STUDIO_HOME": str(tmp_path / "home")}
    code = ("from trainer_core.logging_setup import setup_logging; import threading; setup_logging('crashy'); "
            "t = threading.Thread(target=lambda: 1 / 0); t.start(); t.join(); raise ValueError('boom')")
    result = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.count("ValueError: boom") == 1  # not printed twice
    text = (tmp_path / "home" / "logs" / "fine-tune-studio.log").read_text(encoding="utf-8")
    assert "ZeroDivisionError" in text and "ValueError: boom" in text


def test_user_folders_follow_platformdirs(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_") and k != "FINETUNE_STUDIO_HOME"}
    env["HOME"] = str(tmp_path / "user")
    code = ("import json, platformdirs; from trainer_core import paths; made = paths.ensure_user_dirs(); "
            "name = paths.APP_NAME; print(json.dumps([[str(p) for p in made], "
            "[platformdirs.user_data_dir(name, appauthor=False) + '/runs', "
            "platformdirs.user_config_dir(name, appauthor=False), platformdirs.user_log_dir(name, appauthor=False)]]))")
    result = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import json
    made, expected = json.loads(result.stdout)
    assert made == expected
    for folder in made:
        assert Path(folder).is_dir() and Path(folder).is_relative_to(tmp_path / "user")


def test_reveal_opens_the_folder_or_selects_in_finder(tmp_path, monkeypatch):
    from app.common import reveal

    opened, ran = [], []
    monkeypatch.setattr(reveal.QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
    monkeypatch.setattr(reveal.subprocess, "run", lambda args, check: ran.append(args) or
                        subprocess.CompletedProcess(args, 0))
    log = tmp_path / "fine-tune-studio.log"
    log.write_text("x")
    monkeypatch.setattr(reveal.sys, "platform", "linux")
    assert reveal.reveal_in_file_manager(log) and opened == [str(tmp_path)]
    monkeypatch.setattr(reveal.sys, "platform", "darwin")
    assert reveal.reveal_in_file_manager(log) and ran == [["open", "-R", str(log)]]
    monkeypatch.setenv("FINETUNE_STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(reveal, "reveal_in_file_manager", lambda path: opened.append(str(path)) or True)
    assert reveal.reveal_logs() and opened[-1] == str(logging_setup.log_file())


def test_cli_writes_the_program_log(tmp_path):
    env = {**os.environ, "FINETUNE_STUDIO_HOME": str(tmp_path / "home")}
    result = subprocess.run([PY, "-m", "trainer_core", "generate", "--model", str(tmp_path / "nowhere"), "--prompt",
                             "hi"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("does not exist") == 1
    text = (tmp_path / "home" / "logs" / "fine-tune-studio.log").read_text(encoding="utf-8")
    assert "finetune generate started" in text and f"exit 2: The model path {tmp_path / 'nowhere'}" in text
