"""The Setup tab: model, dataset, method, hyperparameters, bound to one RunConfig.

    pane.config()          -> the RunConfig the form describes (a copy; fields the
                              form lacks keep the loaded preset's values)
    pane.start_blocker()   -> None, or why Start is disabled (invalid field, unusable
                              data, 0% trained tokens, method not in this build, estimated
                              memory over the limit unless ignore_memory: "Start anyway", ...)
    pane.set_config(cfg)   -> load a preset / config.toml into the form
    pane.changed           -> fires (debounced) whenever the above may have changed
    pane.distributed       -> the Distributed group (off: train in this process); its host file
                              problem blocks Start, and step counts use the global batch

Validation messages are RunConfig.problems()' own, shown next to their field.
"""

from __future__ import annotations

import copy
from pathlib import Path

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import (QApplication, QFileDialog, QHBoxLayout, QLabel, QMenu, QPushButton, QScrollArea,
                               QVBoxLayout, QWidget)

from app.setup.memory_panel import MemoryPanel, checkpointing_recommended
from app.common.cli_line import cli_command, launch_cli_command
from app.setup.dataset_analysis import AnalysisRequest, steps_per_epoch
from app.setup.dataset_panel import DatasetPanel
from app.distributed.panel import DistributedPanel
from app.common.form import Form
from app.setup.hparams_panel import HyperparametersPanel, LRPreview
from app.setup.method_panel import LABELS, MethodPanel, method_available
from app.setup.model_panel import ModelPanel
from app.setup.recommended import Recommendations
from app.setup.time_panel import TimePanel
from trainer_core import resources
from trainer_core.config import RunConfig
from trainer_core.data import SFT_KINDS
from trainer_core.errors import UserError
from trainer_core.paths import settings_dir

KIND_FOR_METHOD = {"dpo": ("preference",), "grpo": ("prompt_answer",)}
# fields the memory estimate reads: while one is invalid there is no estimate (nor a checkpointing recommendation)
MEMORY_FIELDS = {"batch_size", "max_seq_length", "fine_tune_type", "lora.rank", "lora.num_layers", "lora.dora"}
LONG_SEQUENCE = 32_768  # max seq length above this gets a warning (memory grows with it)


def presets_dir() -> Path:
    return settings_dir() / "presets"


class SetupPane(QScrollArea):
    changed = Signal()

    def __init__(self, config: RunConfig, parent=None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.NoFrame)
        self._base = copy.deepcopy(config)
        self.form = Form(self)
        self.model_panel = ModelPanel()
        self.method_panel = MethodPanel()
        self.dataset_panel = DatasetPanel()
        self.hparams = HyperparametersPanel()
        self.lr_preview = LRPreview()
        self.distributed = DistributedPanel()
        for field in [self.model_panel.field, *self.method_panel.fields, *self.dataset_panel.fields,
                      *self.hparams.fields]:
            self.form.add(field)
        self.recommend = Recommendations(self.form, self)
        self.hparams.layout().insertWidget(1, self.recommend.reset_label)
        self.form["eval_every"].linkActivated.connect(lambda _: self.form["val_fraction"].set_value(0.05)
                                                      or self._refresh_timer.start())

        self.memory_panel = MemoryPanel()
        self.memory_panel.fixRequested.connect(self.apply_fix)
        self.time_panel = TimePanel()  # "Time ≈ 14 min on this Mac", under the memory line
        self.copy_cli_button = QPushButton("Copy as CLI")
        self.copy_cli_button.setToolTip("Copy the `finetune train …` command that runs this exact configuration "
                                        "(Distributed ticked: `python -m trainer_core.launch … -- train …`).")
        self.copy_cli_button.clicked.connect(self.copy_cli)
        presets = QPushButton()
        presets.setText("Presets")
        self.presets_menu = QMenu(presets)
        self.presets_menu.aboutToShow.connect(self._fill_presets)
        presets.setMenu(self.presets_menu)
        self.notice = QLabel("")
        self.notice.setObjectName("secondary")
        self.notice.setWordWrap(True)

        self.model_panel.footer.addWidget(self.memory_panel)
        self.model_panel.footer.addWidget(self.time_panel)
        content = QWidget()
        self.content = content
        top = QHBoxLayout()
        top.addWidget(self.model_panel, 2)
        top.addWidget(self.method_panel, 3)
        actions = QHBoxLayout()
        actions.addWidget(self.copy_cli_button)
        actions.addWidget(presets)
        actions.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(self.lr_preview, 1)
        right.addWidget(self.distributed)
        right.addLayout(actions)
        right.addWidget(self.notice)
        bottom = QHBoxLayout()
        bottom.addWidget(self.hparams, 3)
        bottom.addLayout(right, 2)
        layout = QVBoxLayout(content)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.setSpacing(8)
        layout.addLayout(top)
        layout.addWidget(self.dataset_panel, 1)
        layout.addLayout(bottom)
        self.setWidget(content)

        self._refresh_timer = QTimer(self, singleShot=True, interval=120, timeout=self.refresh)
        self._analysis_timer = QTimer(self, singleShot=True, interval=350, timeout=self.analyze_dataset)
        self._last_request: AnalysisRequest | None = None
        self._run_problems: dict[str, tuple[str, object]] = {}  # field -> (message, value it was about)
        self.method_panel.methodChanged.connect(self._follow_demo_data)
        self.method_panel.methodChanged.connect(self._show_masking)
        self.recommend.applied.connect(self._refresh_timer.start)
        self.form.changed.connect(self._refresh_timer.start)
        self.model_panel.infoChanged.connect(self._refresh_timer.start)
        self.dataset_panel.summaryChanged.connect(self._refresh_timer.start)
        self.distributed.changed.connect(self._refresh_timer.start)
        self.form.load(config)
        self.refresh()

    # ---- the config ------------------------------------------------------------------
    def config_and_errors(self) -> tuple[RunConfig, dict[str, str]]:
        config = copy.deepcopy(self._base)
        errors = self.form.apply(config)
        return config, errors

    def config(self) -> RunConfig:
        return self.config_and_errors()[0]

    def set_config(self, config: RunConfig) -> None:
        self._base = copy.deepcopy(config)
        self.form.load(config)
        self.recommend.pin()
        self.refresh()

    def problems(self) -> dict[str, str]:
        """Every field problem: unreadable text, RunConfig.problems(), model and data errors."""
        config, problems = self.config_and_errors()
        for name, message in config.problems().items():
            problems.setdefault(name, message)
        if self.model_panel.error:
            problems.setdefault("model", self.model_panel.error)
        if self.dataset_panel.error:
            problems.setdefault("data", self.dataset_panel.error)
        for name, (message, value) in self._run_problems.items():
            if name in self.form.fields and self._value(name) == value:
                problems.setdefault(name, message)
        return problems

    def _value(self, name: str):
        try:
            return self.form[name].value()
        except ValueError:
            return None

    def show_run_problem(self, name: str, message: str) -> bool:
        """A run failed on field `name`: show `message` there until the value changes. False if no such field."""
        if name not in self.form.fields:
            return False
        self._run_problems[name] = (message, self._value(name))
        self.refresh()
        return True

    def start_blocker(self, ignore_memory: bool = False) -> str | None:
        """Why Start is disabled now, or None; `ignore_memory`: not for the memory estimate (Start anyway)."""
        problems = self.problems()
        if problems:
            name, message = next(iter(problems.items()))
            field = self.form.fields.get(name)
            if field is not None and not field.editor.isVisibleTo(self):
                section = LABELS.get(name.split(".")[0], name.split(".")[0])
                return f"{message} (in the {section} settings, hidden for the current method)"
            return message
        distributed = self.distributed.problem()
        if distributed:
            return distributed
        config = self.config()
        if not method_available(config.method):
            return f"{LABELS[config.method]} is not available in this build yet; choose SFT or LoRA."
        summary = self.dataset_panel.summary
        if summary is None:
            return "Reading the dataset…" if self.dataset_panel.busy else "Choose a dataset."
        wanted = KIND_FOR_METHOD.get(config.method, SFT_KINDS)
        if summary.kind not in wanted:
            return (f"{LABELS[config.method]} trains on {' / '.join(wanted)} data, but this dataset is "
                    f"{summary.kind}. Choose matching data or another method.")
        if summary.stats is not None and summary.stats.trained_tokens == 0:
            return ("0% of tokens would be trained: every example is empty after prompt masking and truncation "
                    f"to {config.max_seq_length} tokens. Raise max seq length or check the data.")
        world = self.distributed.world_size()
        if steps_per_epoch(summary.train_examples, config.batch_size * world, config.gradient_accumulation_steps) < 1:
            processes = f" × {world} processes" if world > 1 else ""
            return (f"The training split has {summary.train_examples} usable examples, fewer than one optimizer "
                    f"step (batch size {config.batch_size}{processes} × accumulation "
                    f"{config.gradient_accumulation_steps}).")
        return None if ignore_memory else self.memory_panel.blocker()

    def total_steps(self, config: RunConfig) -> tuple[int | None, int | None]:
        """(total optimizer steps, steps per epoch) at the global batch (× the Distributed processes);
        None when the dataset is not read yet."""
        summary = self.dataset_panel.summary
        if summary is None:
            return (config.max_steps or None), None
        per_epoch = steps_per_epoch(summary.train_examples, max(1, config.batch_size) * self.distributed.world_size(),
                                    max(1, config.gradient_accumulation_steps))
        return (config.max_steps or config.epochs * per_epoch), per_epoch

    # ---- keeping the display current ------------------------------------------------------
    def refresh(self) -> None:
        self._recommend(self.config())
        self._notes(self.config())
        problems = self.problems()
        self.form.show_problems(problems)
        config = self.config()
        self.distributed.set_batch(config.batch_size, config.gradient_accumulation_steps)
        total, per_epoch = self.total_steps(config)
        if not any(name in problems for name in ("learning_rate", "warmup_steps", "min_learning_rate",
                                                 "polynomial_power", "lr_schedule")):
            self.lr_preview.show_schedule(config, total, per_epoch)
        self._show_memory(config)
        self.time_panel.show_plan(config, total, self.dataset_panel.summary, not problems and not self.start_blocker())
        self.copy_cli_button.setEnabled(not problems)
        self._schedule_analysis(config)
        self.changed.emit()

    def _recommend(self, config: RunConfig) -> None:
        info, summary = self.model_panel.info, self.dataset_panel.summary
        extra, why = {}, ""
        if info is not None and summary is not None and summary.stats is not None \
                and not MEMORY_FIELDS & set(self.problems()):
            longest = max(summary.stats.lengths, default=None)
            extra["gradient_checkpointing"], why = checkpointing_recommended(info, config, longest)
        self.form["gradient_checkpointing"].set_note(why)
        self.recommend.update(config.method, config.resolved_fine_tune_type, info.num_parameters if info else None,
                              summary.train_examples if summary else None, config.batch_size * self.distributed.world_size(),
                              config.gradient_accumulation_steps, summary.sample if summary else None, extra)
        self.recommend.refresh()

    def _notes(self, config: RunConfig) -> None:
        """Warnings that do not block Start: a very long max seq length, eval without a validation split."""
        info, summary = self.model_panel.info, self.dataset_panel.summary
        context = info.context_length if info else None
        long = config.max_seq_length > LONG_SEQUENCE or (context and config.max_seq_length > context)
        self.form["max_seq_length"].set_note(
            f"⚠ {config.max_seq_length:,} tokens is very long" + (f" (the model's context is {context:,})"
                                                                   if context else "")
            + ": memory grows with it; most data needs 512–4,096." if long else "")
        no_eval = summary is not None and not summary.has_valid and config.val_fraction == 0 and config.eval_every
        self.form["eval_every"].set_note("⚠ The data has no validation split, so nothing is evaluated. "
                                         "<a href='hold'>Hold out 5% of train</a> or add valid.jsonl." if no_eval
                                         else "")

    def _show_masking(self, method: str) -> None:
        """Diffusion has its own masking checkbox (SFT mode); the dataset's is for the other methods."""
        self.dataset_panel.mask_prompt.editor.setVisible(method != "diffusion")

    def _follow_demo_data(self, method: str) -> None:
        """On the bundled demo data, a method change picks the demo of the data kind it needs."""
        current = Path(self.form["data"].editor.text().strip() or ".").expanduser().resolve()
        demos = {resources.demo_dataset(m).resolve() for m in resources.DEMO_DATASETS}
        wanted = resources.demo_dataset(method)
        if current in demos and current != wanted.resolve() and wanted.is_dir():
            self.form["data"].editor.setText(str(wanted))
            suits = [LABELS[m] for m, name in resources.DEMO_DATASETS.items() if name == wanted.name]
            self.notice.setText(f"Using the {wanted.name} demo dataset, which suits {', '.join(suits)}.")

    def _schedule_analysis(self, config: RunConfig) -> None:
        request = AnalysisRequest.of(config)
        if request != self._last_request and not self.model_panel.error:
            self._last_request = request
            self._analysis_timer.start()

    def analyze_dataset(self) -> None:
        if self._last_request is not None:
            self.dataset_panel.analyze(self._last_request)

    def shutdown(self) -> None:
        """Before the app quits: no pending timer may start another analysis or time measurement."""
        for timer in self.findChildren(QTimer):
            timer.stop()

    def _show_memory(self, config: RunConfig) -> None:
        info = self.model_panel.info
        if info is None or MEMORY_FIELDS & set(self.problems()):
            self.memory_panel.waiting()
            return
        stats = self.dataset_panel.summary.stats if self.dataset_panel.summary else None
        self.memory_panel.show_estimate(info, config, max(stats.lengths, default=None) if stats else None)

    def apply_fix(self, assignments: list[str]) -> None:
        """A memory fix clicked: its `--set` assignments applied to the form's config."""
        self.set_config(self.config().with_overrides(assignments))

    def set_locked(self, locked: bool) -> None:
        """Read-only while a run trains (the run uses the config it started with)."""
        self.content.setEnabled(not locked)
        self.time_panel.set_running(locked)

    # ---- CLI and presets ----------------------------------------------------------------
    def copy_cli(self) -> str:
        """The `finetune train …` line, or with Distributed ticked the launcher's line (an expanded host file
        is written next to the app's launch files when processes per host or "localhost" need one)."""
        panel = self.distributed
        if panel.enabled() and panel.problem() is None:
            line = launch_cli_command(self.config(), panel.launch_hostfile(settings_dir() / "launch"),
                                      panel.backend_name())
        else:
            line = cli_command(self.config())
        QApplication.clipboard().setText(line)
        self.notice.setText("Copied: " + (line if len(line) < 90 else line[:87] + "…"))
        self.notice.setToolTip(line)
        return line

    def _fill_presets(self) -> None:
        menu = self.presets_menu
        menu.clear()
        menu.addAction("Save preset…", self.save_preset)
        menu.addAction("Load preset…", self.load_preset)
        saved = sorted(presets_dir().glob("*.toml")) if presets_dir().is_dir() else []
        if saved:
            menu.addSeparator()
            for path in saved:
                menu.addAction(path.stem, lambda p=path: self.load_preset_from(p))

    def save_preset(self) -> None:
        presets_dir().mkdir(parents=True, exist_ok=True)
        path, _ = QFileDialog.getSaveFileName(self, "Save preset", str(presets_dir() / "preset.toml"),
                                              "TOML (*.toml)")
        if path:
            self.save_preset_to(Path(path))

    def save_preset_to(self, path: Path) -> None:
        self.config().save(path)
        self.notice.setText(f"Saved preset {path.name}")

    def load_preset(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load preset or config.toml", str(presets_dir()),
                                              "TOML (*.toml)")
        if path:
            self.load_preset_from(Path(path))

    def load_preset_from(self, path: Path) -> None:
        try:
            self.set_config(RunConfig.load(path))
        except UserError as e:
            self.notice.setText(e.message)
            return
        self.notice.setText(f"Loaded {path.name}")
