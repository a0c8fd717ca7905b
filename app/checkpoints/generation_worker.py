"""Text generation for the Chat and Compare tabs, on its own QThread.

    generator = Generator()
    job = generator.generate(model, checkpoint, messages, settings, system)   # -> job id (int)
    generator.piece(job, text) ... generator.done(job, info) | generator.failed(job, message)
    generator.stop([job])   # ends that answer at its next piece (or before it starts); other jobs go on
    generator.shutdown()    # the owner's last word: stop everything and wait for the thread

Threading contract (DESIGN.md "GUI threading"): loading the model and every MLX
call run on the generation thread; the GUI thread only queues requests (a queued
signal) and marks jobs stopped. Jobs run one after another in request order. The
Chat and Compare tabs share one Generator (one model in memory) and each stops
only its own jobs. The last loaded model (base + checkpoint) stays in memory, so a
multi-turn chat loads once. A checkpoint of a diffusion run is answered by the
diffusion sampler.
"""

from __future__ import annotations

import itertools
import time
import traceback
from dataclasses import dataclass, field

from PySide6.QtCore import QObject, QThread, Signal, Slot

from app.common.gc_policy import collect_on_gui_thread
from trainer_core.errors import UserError


@dataclass
class Request:
    """One answer to produce. `prompt` is a user text or a list of {"role", "content"} messages."""
    job: int
    model: str | None
    checkpoint: str | None
    prompt: object
    system: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    tag: dict = field(default_factory=dict)


class _Worker(QObject):
    """Lives on the generation thread; `handle` runs there (queued)."""

    piece = Signal(int, str)
    loading = Signal(int, str)
    done = Signal(int, dict)
    failed = Signal(int, str)

    def __init__(self, stopped: set[int], stop_mark: list[int]):
        super().__init__()
        self.stopped = stopped  # jobs asked to stop (the GUI thread adds ids; set operations hold the GIL)
        self.stop_mark = stop_mark  # shutting down: jobs with id <= stop_mark[0] end (or never start)
        self.cache_key = None
        self.cache = None

    def _stopped(self, job: int) -> bool:
        return job in self.stopped or job <= self.stop_mark[0]

    def _load(self, request: Request):
        key = (request.model, request.checkpoint)
        if key != self.cache_key:
            self.cache_key = self.cache = None  # free the old model before loading the next
            from trainer_core.generation import diffusion_sampler, generate
            if request.checkpoint and diffusion_sampler.is_diffusion_checkpoint(request.checkpoint):
                self.cache = ("diffusion", diffusion_sampler.load(request.model, request.checkpoint))
            else:
                self.cache = ("text", generate.load_for_inference(request.model, request.checkpoint))
            self.cache_key = key
        return self.cache

    @Slot(object)
    def handle(self, request: Request) -> None:
        job = request.job
        if self._stopped(job):
            self.done.emit(job, {"stopped": True, "tokens": 0, "seconds": 0.0})
            return
        started = time.perf_counter()
        pieces = 0
        try:
            self.loading.emit(job, "Loading the model…" if (request.model, request.checkpoint) != self.cache_key
                              else "")
            kind, loaded = self._load(request)
            if kind == "diffusion":
                from trainer_core.generation.diffusion_sampler import DiffusionSettings, stream
                settings = DiffusionSettings(max_tokens=request.max_tokens, temperature=request.temperature)
            else:
                from trainer_core.generation.generate import GenerationSettings, stream
                settings = GenerationSettings(max_tokens=request.max_tokens, temperature=request.temperature,
                                              top_p=request.top_p)
            self.loading.emit(job, "")
            started = time.perf_counter()
            for text in stream(loaded, request.prompt, settings, request.system or None):
                if self._stopped(job):
                    break
                pieces += 1
                self.piece.emit(job, text)
        except UserError as e:
            self.failed.emit(job, e.message)
            return
        except Exception as e:  # a bug: say what it was, keep the window alive
            self.failed.emit(job, f"Generation failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
            return
        self.done.emit(job, {"stopped": self._stopped(job), "pieces": pieces, "kind": kind,
                             "seconds": time.perf_counter() - started})


class Generator(QObject):
    """Owns the generation thread; the GUI talks only to this (signals are re-emitted on the GUI thread).

    Signals: loading(job, text) ("" once loaded), piece(job, text), done(job, info: stopped, pieces,
    seconds), failed(job, message). `busy` is True while a job is queued or running.
    """

    piece = Signal(int, str)
    loading = Signal(int, str)
    done = Signal(int, dict)
    failed = Signal(int, str)
    _request = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._ids = itertools.count(1)
        self._stop_mark = [0]
        self._stopped: set[int] = set()
        self._pending: set[int] = set()
        self._last = 0
        self.thread: QThread | None = None
        self._worker: _Worker | None = None

    def _ensure_thread(self) -> None:
        if self.thread is not None:
            return
        collect_on_gui_thread()
        self.thread = QThread()
        self.thread.setObjectName("generation")
        self._worker = _Worker(self._stopped, self._stop_mark)
        self._worker.moveToThread(self.thread)
        self._request.connect(self._worker.handle)
        self._worker.piece.connect(self.piece)
        self._worker.loading.connect(self.loading)
        self._worker.done.connect(self._ended)
        self._worker.failed.connect(self._failed)
        self.thread.finished.connect(self._worker.deleteLater)
        self.thread.start()

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def generate(self, model: str | None, checkpoint: str | None, prompt, *, system: str | None = None,
                 max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0) -> int:
        """Queue one answer; returns its job id (signals carry it)."""
        self._ensure_thread()
        job = next(self._ids)
        self._last = job
        self._pending.add(job)
        self._request.emit(Request(job, model or None, str(checkpoint) if checkpoint else None, prompt, system,
                                   int(max_tokens), float(temperature), float(top_p)))
        return job

    def stop(self, jobs) -> None:
        """End these jobs (ids): a running one at its next piece, a queued one before it starts. Others go on."""
        self._stopped.update(int(job) for job in jobs if job in self._pending)

    def stop_all(self) -> None:
        """End the running answer and skip every queued one (shutting down)."""
        self._stop_mark[0] = self._last

    @Slot(int, dict)
    def _ended(self, job: int, info: dict) -> None:
        self._pending.discard(job)
        self._stopped.discard(job)
        self.done.emit(job, info)

    @Slot(int, str)
    def _failed(self, job: int, message: str) -> None:
        self._pending.discard(job)
        self._stopped.discard(job)
        self.failed.emit(job, message)

    def shutdown(self, timeout_ms: int = 60_000) -> bool:
        """Stop, end the thread and wait for it; True if it ended."""
        if self.thread is None:
            return True
        self.stop_all()
        self.thread.quit()
        ended = self.thread.wait(timeout_ms)
        if ended:
            self.thread = None
        return ended

