"""Chat tab and the generation worker: streaming from a checkpoint, stop, errors (tiny model)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

import app  # noqa: F401  (trainer_core first)
from app.checkpoints.chat_pane import ChatPane
from app.checkpoints.generation_worker import Generator
from tests.app.test_app_checkpoints import micro_config
from trainer_core import runner
from tests.app_home import studio_home  # noqa: F401  (autouse: fresh app home, no thread left)

TIMEOUT = 60_000


@pytest.fixture(scope="module")
def checkpoint(tiny_model_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("chat-run")
    runner.train(micro_config(tiny_model_dir, tmp, "chat", max_steps=4, save_every=4, eval_every=0))
    return tmp / "runs" / "chat" / "checkpoints" / "step-000004"


@pytest.fixture
def generator():
    generator = Generator()
    yield generator
    assert generator.shutdown(30_000)


def test_generator_streams_pieces_on_its_own_thread(qtbot, generator, checkpoint):
    threads, pieces = [], []
    generator.piece.connect(lambda job, text: pieces.append(text))
    generator._ensure_thread()
    generator._worker.piece.connect(lambda job, text: threads.append(threading.current_thread()),
                                    type=Qt.DirectConnection)
    with qtbot.waitSignal(generator.done, timeout=TIMEOUT) as blocker:
        job = generator.generate(None, checkpoint, "Tell me about the fox", max_tokens=8)
    assert blocker.args[0] == job and not blocker.args[1]["stopped"]
    assert pieces and blocker.args[1]["pieces"] == len(pieces)
    assert threads and all(t is not threading.main_thread() for t in threads)
    assert not generator.busy


def test_chat_answers_from_a_checkpoint_and_keeps_the_turns(qtbot, generator, checkpoint):
    pane = ChatPane(generator)
    qtbot.addWidget(pane)
    assert "talk to the base model" in pane.transcript.placeholderText()
    pane.set_checkpoints([str(checkpoint)], str(checkpoint))
    assert "talk to chat · step-000004" in pane.transcript.placeholderText()  # whom the next message goes to
    pane.checkpoint.setCurrentIndex(0)
    assert "talk to the base model" in pane.transcript.placeholderText()
    pane.checkpoint.setCurrentIndex(1)
    pane.max_tokens.setValue(6)
    pane.temperature.setValue(0.0)
    with qtbot.waitSignal(pane.answered, timeout=TIMEOUT) as first:
        assert pane.send("Hello there")
        assert pane.generating and pane.stop_button.isEnabled() and not pane.send_button.isEnabled()
    assert first.args[0] and pane.last_answer() == first.args[0]
    with qtbot.waitSignal(pane.answered, timeout=TIMEOUT):
        pane.send("And again?")
    assert [m["role"] for m in pane.messages] == ["user", "assistant", "user", "assistant"]
    assert "Hello there" in pane.transcript.toPlainText()
    assert pane.send_button.isEnabled() and not pane.stop_button.isEnabled() and pane.copy_button.isEnabled()
    pane.copy_answer()
    assert QGuiApplication.clipboard().text() == pane.last_answer()


def test_stop_ends_the_answer_early(qtbot, generator, checkpoint):
    pane = ChatPane(generator)
    qtbot.addWidget(pane)
    pane.set_checkpoints([str(checkpoint)], str(checkpoint))
    pane.max_tokens.setValue(2000)
    pane.temperature.setValue(0.0)  # greedy: a sampled end-of-sequence before the stop lands made this flaky
    generator.piece.connect(lambda job, text: pane.stop())
    with qtbot.waitSignal(generator.done, timeout=TIMEOUT) as blocker:
        pane.send("Go on forever")
    assert blocker.args[1]["stopped"] and blocker.args[1]["pieces"] < 50
    assert pane.status.text().startswith("Stopped")


def test_a_bad_checkpoint_says_so_and_gives_the_question_back(qtbot, generator, tmp_path):
    pane = ChatPane(generator)
    qtbot.addWidget(pane)
    bad = tmp_path / "not-a-checkpoint"
    bad.mkdir()
    pane.set_checkpoints([], str(bad))
    with qtbot.waitSignal(generator.failed, timeout=TIMEOUT):
        pane.send("Hi")
    assert "not a checkpoint folder" in pane.status.text()
    assert pane.messages == [] and pane.send_button.isEnabled()


def test_compare_streams_base_and_checkpoint_answers_that_differ(qtbot, generator, tiny_model_dir, tmp_path):
    from app.checkpoints.compare_pane import CheckpointCompare
    runner.train(micro_config(tiny_model_dir, tmp_path, "trained", max_steps=8, save_every=8, eval_every=0,
                              learning_rate=2e-2))
    trained = tmp_path / "runs" / "trained" / "checkpoints" / "step-000008"
    pane = CheckpointCompare(generator)
    qtbot.addWidget(pane)
    pane.set_checkpoints([str(trained)])
    pane.prompt.setText("Question 3: tell me about the dog?")
    pane.max_tokens.setValue(12)
    with qtbot.waitSignal(pane.allDone, timeout=TIMEOUT):
        assert pane.run()
        assert not pane.run_button.isEnabled() and pane.stop_button.isEnabled()
    base, tuned = pane.texts()
    assert base and tuned and base != tuned
    assert pane.run_button.isEnabled()


def test_chat_stop_and_compare_stop_each_end_only_their_own_answers(qtbot, generator, checkpoint):
    """One Generator serves both tabs: each Stop button ends its own tab's jobs, the other tab's go on."""
    from PySide6.QtTest import QTest
    from app.checkpoints.compare_pane import CheckpointCompare
    chat, compare = ChatPane(generator), CheckpointCompare(generator)
    qtbot.addWidget(chat)
    qtbot.addWidget(compare)
    chat.set_checkpoints([str(checkpoint)], str(checkpoint))
    chat.max_tokens.setValue(2000)
    compare.set_checkpoints([str(checkpoint)])
    compare.prompt.setText("Tell me about the fox")
    compare.max_tokens.setValue(10)
    ended = {}
    generator.done.connect(lambda job, info: ended.setdefault(job, info))
    assert compare.run()  # queued first: base model, then the checkpoint
    assert chat.send("Go on forever")  # queued behind them
    assert chat.stop_button.isEnabled() and compare.stop_button.isEnabled()
    with qtbot.waitSignal(compare.allDone, timeout=TIMEOUT):
        QTest.mouseClick(chat.stop_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not chat.generating, timeout=TIMEOUT)
    assert [info["stopped"] for job, info in sorted(ended.items())] == [False, False, True]
    assert all(text for text in compare.texts()) and chat.status.text().startswith("Stopped")
    assert not compare.stop_button.isEnabled() and not chat.stop_button.isEnabled()

    ended.clear()
    chat.max_tokens.setValue(200)
    assert chat.send("Again, shortly")
    chat_job = chat.job
    assert compare.run()
    with qtbot.waitSignal(compare.allDone, timeout=TIMEOUT):
        QTest.mouseClick(compare.stop_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not chat.generating, timeout=TIMEOUT)
    assert not ended[chat_job]["stopped"]  # Compare's Stop left it alone
    assert all(info["stopped"] for job, info in ended.items() if job != chat_job)
