"""The training worker: a QObject on its own QThread, and the Callback bridge.

    controller = TrainingController()
    controller.worker_signals...        # see TrainingWorker's signals
    controller.start(config)            # build the run and train on a new QThread
    controller.start(None, resume=(run_dir, checkpoint))   # continue a run exactly (runner.prepare_resume)
    controller.pause(True / False)      # hold / continue at the next step boundary
    controller.save_now()               # checkpoint at the next step boundary
    controller.stop()                   # checkpoint, then end ("stopped")
    controller.shutdown()               # stop and wait for the thread (window closing)

Threading contract (DESIGN.md "GUI threading"): everything that touches MLX
(model loading, tokenising, the loop) runs on the worker thread. The GUI
thread only sets flags (`threading` primitives) and receives plain-data
signals, delivered queued. Stop/pause/save are honoured at the next step
boundary, which the loop reaches through `Callback.should_stop()`.
"""

from __future__ import annotations

import threading
import time
import traceback

from PySide6.QtCore import QObject, QThread, Signal, Slot

from app.common.gc_policy import collect_on_gui_thread
from trainer_core import runner
from trainer_core.training.callbacks import Callback, eval_text, event_text
from trainer_core.config import RunConfig
from trainer_core.errors import UserError


class _Requests:
    """Flags the GUI thread sets and the training thread reads at step boundaries."""

    def __init__(self):
        self.lock = threading.Condition()
        self.stop = False
        self.paused = False
        self.save = False

    def set(self, **flags) -> None:
        with self.lock:
            for name, value in flags.items():
                setattr(self, name, value)
            self.lock.notify_all()


class SignalBridge(Callback):
    """Turns core hooks (training thread) into the worker's Qt signals.

    Payloads are the loop's own plain dicts, so signal keys equal metrics.jsonl
    keys; `metrics` records get a "type" ("train" / "eval") like the file's.
    """

    def __init__(self, worker: "TrainingWorker", requests: _Requests):
        self.worker = worker
        self.requests = requests
        self.loop = None  # set once the run is built (needed for "save now")
        self.last_saved_step = -1

    def on_train_begin(self, info):
        self.worker.trainBegan.emit(dict(info))

    def on_step_end(self, metrics):
        self.worker.metrics.emit({"type": "train", "time": time.time(), **metrics})
        self.worker.progress.emit(int(metrics["step"]), int(self.loop.total_steps) if self.loop else 0)

    def on_evaluate(self, metrics):
        self.worker.metrics.emit({"type": "eval", "time": time.time(), **metrics})
        self.worker.log.emit(eval_text(metrics))

    def on_save(self, info):
        self.last_saved_step = int(info["step"])
        self.worker.checkpointSaved.emit({"time": time.time(), **info})

    def on_event(self, info):
        self.worker.metrics.emit({"type": "event", "time": time.time(), **info})
        self.worker.log.emit(event_text(info))

    def on_log(self, message):
        self.worker.log.emit(str(message))

    def wants_stop(self) -> bool:
        return self.requests.stop

    def on_progress(self, info):
        self.worker.stepProgress.emit(dict(info))

    def should_stop(self) -> bool:
        """Step boundary: save if asked, wait while paused, then report the stop flag."""
        requests = self.requests
        waiting = False
        while True:
            self._save_if_requested()
            with requests.lock:
                if requests.stop or not requests.paused:
                    break
                if not waiting:
                    waiting = True
                    self.worker.pausedChanged.emit(True)
                requests.lock.wait(0.2)
        if waiting:
            self.worker.pausedChanged.emit(False)
        return requests.stop

    def _save_if_requested(self) -> None:
        if not self.requests.save:
            return
        self.requests.set(save=False)
        if self.loop is not None and self.loop.step > 0 and self.loop.step != self.last_saved_step:
            self.loop.save_checkpoint()
        else:
            self.worker.log.emit("Save now: nothing new to save since the last checkpoint.")


class RunSignals(QObject):
    """The signals a run driver emits (plain data; dict keys are metrics.jsonl's): the in-process
    TrainingWorker, the TrainingController that re-emits them, and the distributed DistributedRun."""

    runCreated = Signal(str)
    trainBegan = Signal(dict)
    progress = Signal(int, int)
    stepProgress = Signal(dict)  # inside a long step: {"step", "phase", "done", "total", "per_sec"}
    metrics = Signal(dict)
    checkpointSaved = Signal(dict)
    log = Signal(str)
    pausedChanged = Signal(bool)
    finished = Signal(dict)
    failed = Signal(str)
    failedField = Signal(str, str)


class TrainingWorker(RunSignals):
    """Builds the run and trains it; lives on a QThread (never subclass QThread).

    Signals (all plain data, emitted on the worker thread, delivered queued):
      runCreated(str run_dir), trainBegan(dict), progress(int step, int total_steps),
      metrics(dict), checkpointSaved(dict), log(str), pausedChanged(bool),
      finished(dict: status, step, total_steps, run_dir, final_dir, losses),
      failed(str message) and failedField(str field, str message) for a UserError naming a field.
    """

    def __init__(self, config: RunConfig | None, resume: tuple[str, str | None] | None = None, force: bool = False):
        super().__init__()
        self.config = config
        self.resume = resume
        self.force = force  # start even if the memory estimate is above what is available ("Start anyway")
        self.requests = _Requests()
        self.bridge = SignalBridge(self, self.requests)
        self.loop = None

    # ---- called from the GUI thread (thread-safe flag setting only) ---------------
    def request_stop(self) -> None:
        self.requests.set(stop=True)
        loop = self.loop
        if loop is not None:
            loop.request_stop()

    def set_paused(self, paused: bool) -> None:
        self.requests.set(paused=paused)

    def request_save(self) -> None:
        self.requests.set(save=True)

    # ---- runs on the worker thread ------------------------------------------------
    @Slot()
    def run(self) -> None:
        started = time.time()
        run_dir = ""
        try:
            self.log.emit("Loading the model and tokenising the data…")
            if self.resume is not None:
                run_dir, checkpoint = self.resume
                run = runner.prepare_resume(run_dir, callbacks=[self.bridge], checkpoint=checkpoint or None,
                                            force=self.force)
            else:
                run = runner.build_run(self.config, [self.bridge], force=self.force)
            run_dir = str(run.run_dir)
            self.loop = run.loop
            self.bridge.loop = run.loop
            if self.requests.stop:
                run.loop.request_stop()
            self.runCreated.emit(run_dir)
            result = run.train()
        except UserError as e:
            if e.field:
                self.failedField.emit(e.field, e.message)
            self.failed.emit(e.message)
            return
        except Exception as e:  # a bug in the core: report it, keep what was saved
            self.log.emit(traceback.format_exc())
            self.failed.emit(f"Training crashed: {type(e).__name__}: {e}. "
                             f"Checkpoints already written{' in ' + run_dir if run_dir else ''} are kept.")
            return
        self.finished.emit({
            "status": result.status, "step": result.step, "total_steps": result.total_steps,
            "run_dir": run_dir, "final_dir": result.final_dir, "elapsed": time.time() - started,
            "last_train_loss": result.last_train_loss, "last_eval_loss": result.last_eval_loss,
            "best_eval_loss": result.best_eval_loss,
        })


class TrainingController(RunSignals):
    """Owns the worker thread of the current run; the GUI talks only to this.

    Re-emits the worker's signals (same names) so widgets connect once.
    `running` is True from `start` until the thread has ended.
    """

    runningChanged = Signal(bool)

    SIGNALS = ("runCreated", "trainBegan", "progress", "stepProgress", "metrics", "checkpointSaved", "log",
               "pausedChanged", "finished", "failed", "failedField")

    def __init__(self, parent=None):
        super().__init__(parent)
        self.thread: QThread | None = None
        self.worker: TrainingWorker | None = None
        self.paused = False

    @property
    def running(self) -> bool:
        return self.thread is not None

    def start(self, config: RunConfig | None, resume: tuple[str, str | None] | None = None,
              force: bool = False) -> None:
        """Train `config` on a new thread, or with `resume=(run_dir, checkpoint or None)` continue that run;
        `force`: past the pre-start memory check."""
        if self.running:
            raise RuntimeError("a run is already in progress")
        collect_on_gui_thread()
        thread = QThread()
        thread.setObjectName("training")
        worker = TrainingWorker(config, resume, force)
        worker.moveToThread(thread)
        for name in self.SIGNALS:
            getattr(worker, name).connect(getattr(self, name))
        worker.finished.connect(thread.quit)
        worker.failed.connect(thread.quit)
        thread.started.connect(worker.run)
        thread.finished.connect(worker.deleteLater)
        thread.finished.connect(self._thread_ended)
        self.thread, self.worker, self.paused = thread, worker, False
        self.runningChanged.emit(True)
        thread.start()

    def pause(self, paused: bool) -> None:
        if self.worker is not None:
            self.paused = paused
            self.worker.set_paused(paused)

    def save_now(self) -> None:
        if self.worker is not None:
            self.worker.request_save()

    def stop(self) -> None:
        """Stop at the next step boundary, after saving a checkpoint (returns at once)."""
        if self.worker is not None:
            self.worker.request_stop()

    def shutdown(self, timeout_ms: int = 120_000) -> bool:
        """Stop the run and wait for its thread (the owner's last word); True if it ended."""
        if self.thread is None:
            return True
        self.stop()
        thread = self.thread
        thread.quit()
        ended = thread.wait(timeout_ms)
        if ended:
            self._thread_ended()
        return ended

    @Slot()
    def _thread_ended(self) -> None:
        if self.thread is None:
            return
        # `finished` is emitted from the thread just before it really ends: wait for that
        # (microseconds) so the QThread is never destroyed while still running.
        self.thread.wait()
        self.thread.deleteLater()
        self.thread = self.worker = None
        self.paused = False
        self.runningChanged.emit(False)
