"""The Setup tab's time line: "Time ≈ 14 min on this Mac", under the memory estimate.

    panel.show_plan(config, total_steps, summary, ready)   the form changed (summary: DatasetSummary or None;
                                                           ready: nothing blocks Start)
    panel.set_running(running)                             a run starts (a measurement is cancelled) or ends
    panel.follow_run(run_dir)                              the running run's config.toml: whose speed to refine
    panel.live(record)                                     a train record of the running run

The arithmetic and the speed cache are trainer_core.training.time_estimate's. With no cached speed for the
model × method × fine-tune type, a few real training steps are timed on the task pool (never on the GUI
thread) the first time the form is ready (`runner.measure_speed`); a running run's own speed replaces the
cached one as it trains, so the next estimate uses what this computer really did.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel

from app.common.keys import HERE
from app.common.tasks import LatestTask
from trainer_core.config import RunConfig
from trainer_core.training import time_estimate as te

MEASURE_STEPS = 4


class TimePanel(QLabel):
    auto_measure = True  # time a few steps on first use (the GUI tests turn it off; they measure on purpose)

    def __init__(self, parent=None):
        super().__init__("", parent)
        self.setObjectName("secondary")
        self.setWordWrap(True)
        self.setOpenExternalLinks(False)
        self.linkActivated.connect(lambda _: self.measure())
        self._task = LatestTask()
        self.destroyed.connect(self._task.cancel)
        self._timer = QTimer(self, singleShot=True, interval=1500, timeout=self.measure)
        self._plan: tuple[RunConfig, te.Workload] | None = None
        self._failed: dict[str, str] = {}  # key -> why measuring it failed (not retried on its own)
        self._running = False
        self._live_key, self._live_rows, self._live_records = "", 1, []

    @property
    def measuring(self) -> bool:
        return self._task.running

    # ---- the plan before Start -----------------------------------------------------------
    def show_plan(self, config: RunConfig, total_steps: int | None, summary, ready: bool) -> None:
        if self._running:
            return
        if not total_steps or summary is None:
            self._plan = None
            self.setText("")
            return
        stats = summary.stats
        rows = max(1, config.batch_size) * max(1, config.gradient_accumulation_steps)
        evals = te.evaluation_tokens(total_steps, config.eval_every, summary.counts.get("valid", 0),
                                     stats.total_tokens / max(1, stats.examples) if stats else 0.0,
                                     config.batch_size, config.eval_batches) if summary.has_valid else 0
        work = te.workload(total_steps, rows, dataset_tokens=stats.total_tokens if stats else None,
                           dataset_rows=stats.examples if stats else 0, epochs=config.epochs,
                           max_steps=config.max_steps, eval_tokens=evals)
        previous = self._plan[0] if self._plan else None
        self._plan = (config, work)
        key = te.rate_key(config)
        rate = te.load_rate(key)
        if rate is not None:
            self._show(work, rate)
        elif self.measuring:
            if previous is not None and te.rate_key(previous) != key:
                self._task.cancel()
                self._ask_to_measure(key, ready)
        else:
            self._ask_to_measure(key, ready)

    def _ask_to_measure(self, key: str, ready: bool) -> None:
        self._timer.stop()  # a measurement is only ever started for the plan shown now, when it is ready
        why = self._failed.get(key)
        if why:
            self.setText(f"Time: unknown — measuring failed ({why}). <a href='measure'>Try again</a>")
        elif ready and self.auto_measure:
            self.setText(f"Time: measuring {HERE}'s speed with {MEASURE_STEPS} training steps…")
            self._timer.start()
        else:
            self.setText(f"Time: not measured on {HERE} yet. <a href='measure'>Measure ({MEASURE_STEPS} "
                         "training steps)</a>" if ready else "")
        self.setToolTip("")

    def _show(self, work: te.Workload, rate: te.Rate) -> None:
        seconds = te.estimate_seconds(work, rate)
        how = "this model's last run" if rate.source == "live" else f"{rate.steps} timed steps"
        speed = f"{rate.tokens_per_sec:,.0f} tokens/s" if work.tokens is not None else f"{rate.rows_per_sec:.2f} rows/s"
        self.setText(f"Time {te.format_duration(seconds)} on {HERE}")
        amount = f"{work.tokens:,} tokens" if work.tokens is not None else f"{work.rows:,} rows"
        evals = f" + evaluations over {work.eval_tokens:,} tokens (forward only)" if work.eval_tokens else ""
        self.setToolTip(f"{work.steps:,} steps · {amount}{evals} at {speed} (from {how}); refined from the run's "
                        "own speed once it trains. Not included: loading the model, writing checkpoints and "
                        "their sample answers.")

    # ---- measuring ------------------------------------------------------------------------
    def measure(self) -> None:
        """Time a few real steps of the planned run on the task pool; the answer is cached per model."""
        if self._plan is None or self._running:
            return
        config = self._plan[0]
        key = te.rate_key(config)
        self._failed.pop(key, None)
        self.setText(f"Time: measuring {HERE}'s speed with {MEASURE_STEPS} training steps…")

        def job(task):
            from trainer_core import runner
            return runner.measure_speed(config, MEASURE_STEPS, should_stop=lambda: task.cancelled)

        self._task.start(job, lambda rate: self._measured(key, rate), lambda message: self._measure_failed(key, message))

    def _measured(self, key: str, rate: te.Rate | None) -> None:
        if rate is None:
            self._measure_failed(key, "no step was timed")
            return
        te.save_rate(key, rate)
        if self._plan is not None and te.rate_key(self._plan[0]) == key and not self._running:
            self._show(self._plan[1], rate)

    def _measure_failed(self, key: str, message: str) -> None:
        self._failed[key] = message.splitlines()[0][:160] if message else "unknown error"
        if self._plan is not None and te.rate_key(self._plan[0]) == key and not self._running:
            self._ask_to_measure(key, True)

    # ---- a run trains ----------------------------------------------------------------------
    def set_running(self, running: bool) -> None:
        self._running = running
        if running:
            self._timer.stop()
            self._task.cancel()  # the run itself measures better; never two trainings at once
            self._live_key, self._live_records = "", []

    def follow_run(self, run_dir) -> None:
        try:
            config = RunConfig.load(Path(run_dir) / "config.toml")
        except Exception:  # noqa: BLE001  (no estimate is better than a broken window)
            self._live_key = ""
            return
        self._live_key = te.rate_key(config)
        self._live_rows = max(1, config.batch_size) * max(1, config.gradient_accumulation_steps)
        self._live_records = []

    def live(self, record: dict) -> None:
        """A train record of the running run: every few steps its median speed becomes the cached one."""
        if not self._live_key or record.get("type") != "train":
            return
        self._live_records.append(record)
        timed = len(self._live_records) - te.SKIP_STEPS
        if timed >= te.LIVE_MIN_STEPS and timed % te.LIVE_MIN_STEPS == 0:
            # the run's steps so far (re-numbered so its first, compiling step is the one skipped)
            records = [dict(r, step=i + 1) for i, r in enumerate(self._live_records[-50:])]
            rate = te.rate_from_records(records, self._live_rows, source="live")
            if rate is not None:
                te.save_rate(self._live_key, rate)
