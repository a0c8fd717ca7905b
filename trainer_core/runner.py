"""Build and run a training run from a RunConfig: the library call the CLI and GUI share.

    result = train(config, callbacks=[...])          # new run
    result = resume(run_dir, max_steps=None)         # continue exactly where it stopped

Order matters for "nothing half-written": the config is validated, the data
read and checked, the model loaded and the examples tokenised *before* the run
folder is created, so bad input never leaves a folder that looks like a run.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlx.core as mx

from trainer_core import versions
from trainer_core.config import RunConfig
from trainer_core.config.recommend import SAMPLE_RECORDS, fill_unset
from trainer_core.data import load_run_data
from trainer_core.data.hub_files import pin_data
from trainer_core.distributed import launch, ranks as distributed
from trainer_core.errors import UserError
from trainer_core.generation.samples import CheckpointSamples, choose_prompts
from trainer_core.methods import make_method
from trainer_core.models.adapters import prepare_for_training, trainable_count
from trainer_core.models.loading import load_model, pin_model, read_model_info, should_dequantize
from trainer_core.models.recompute import recompute_blocks, recompute_swiglu_products
from trainer_core.paths import default_runs_root
from trainer_core.training.callbacks import Callback, CallbackList, LogWriter, MetricsWriter
from trainer_core.training.checkpoint import CheckpointManager, read_state
from trainer_core.training.heartbeat import Heartbeat
from trainer_core.training.guard import memory_limit, mlx_memory_limit
from trainer_core.training.loop import TrainingLoop, TrainResult
from trainer_core.training import memory
from trainer_core.training.resume_checks import check_resumable, fingerprint
from trainer_core.training.run_lock import RunLock
from trainer_core.training.time_estimate import Rate, rate_from_records

CONFIG_FILE = "config.toml"


@dataclass
class Run:
    """Everything built for one run, ready for `train()`."""
    config: RunConfig
    run_dir: Path
    loop: TrainingLoop
    model_name: str
    data_stats: dict
    lock: RunLock | None = None  # held by the process that trains the run (rank 0)
    fresh: bool = False  # this process created the run folder
    changes: dict = field(default_factory=dict)  # resume: settings changed since the checkpoint (honoured)
    memory: memory.MemoryEstimate | None = None  # the estimated peak checked before the run folder was made

    def train(self) -> TrainResult:
        """Train, then release the run folder. A new run that fails before its first step leaves no folder
        behind (nothing in it to resume); any other ending is recorded as a `stopped` event."""
        try:
            with mlx_memory_limit(memory_limit(self.config.max_memory_gb)):  # MLX holds back there (guard.py)
                return self.loop.train()
        except BaseException:
            if self.fresh and self.loop.step == 0 and not _has_checkpoints(self.run_dir):
                self.release()
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        finally:
            self.release()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def _has_checkpoints(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("step-*"))


class _Remember(Callback):
    """Keeps log lines said before the run folder (and its log.txt) exists."""

    def __init__(self):
        self.lines: list[str] = []

    def on_log(self, message: str) -> None:
        self.lines.append(message)


def runs_root(config: RunConfig) -> Path:
    return Path(config.output_dir).expanduser() if config.output_dir else default_runs_root()


def default_run_name(config: RunConfig, model_name: str) -> str:
    short = re.sub(r"[^A-Za-z0-9]+", "-", model_name.split("(")[0]).strip("-").lower()[:32] or "model"
    return f"{config.method}-{short}-{time.strftime('%Y%m%d-%H%M%S')}"


def _split_validation(splits, config: RunConfig):
    """Hold out val_fraction of train as valid when there is no valid split (seeded)."""
    if splits.valid or not config.val_fraction:
        return splits
    import numpy as np
    order = np.random.default_rng(config.seed).permutation(len(splits.train))
    n_valid = max(1, int(len(order) * config.val_fraction))
    valid_idx = set(order[:n_valid].tolist())
    splits.valid = [r for i, r in enumerate(splits.train) if i in valid_idx]
    splits.train = [r for i, r in enumerate(splits.train) if i not in valid_idx]
    return splits


def build_run(config: RunConfig, callbacks=(), *, run_dir: Path | None = None, world_size: int = 1,
              rank: int = 0, resume_from: tuple[Path, dict] | None = None, allow_model_change: bool = False,
              force: bool = False, recommend=frozenset()) -> Run:
    """Validate, load data and model, prepare adapters, check the memory estimate, create the run folder,
    build the loop.

    `run_dir` (a resume) is locked first; `resume_from` = (checkpoint, its trainer_state): the run is checked
    against it (model, data, reward file, settings) before any model is loaded or user code imported.
    An estimated peak above the memory available (memory.py) is a UserError naming fixes unless `force`.
    `recommend`: the fields (config.recommend.RECOMMENDED) the user left unset, given the recommended values
    for this method, model size and dataset size before anything is built (`finetune train`)."""
    config.validate()
    writer = rank == 0  # only rank 0 writes the run folder (DESIGN.md); other ranks only read
    lock = RunLock(run_dir).acquire() if run_dir is not None and writer else None
    try:
        return _build(config, callbacks, run_dir, world_size, rank, resume_from, allow_model_change, lock,
                      force=force, recommend=recommend)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def plan_run(config: RunConfig, callbacks=(), recommend=frozenset()) -> memory.MemoryEstimate:
    """`finetune train --dry-run`: read the data, load the model, tokenise, and estimate the peak memory
    (its breakdown goes to the callbacks' on_log); nothing is trained or written."""
    return _build(config.validate(), callbacks, None, 1, 0, None, False, None, plan_only=True, recommend=recommend)


def _build(config, callbacks, run_dir, world_size, rank, resume_from, allow_model_change, lock, *,
           force: bool = False, plan_only: bool = False, recommend=frozenset()):
    writer = rank == 0
    early_log = _Remember()
    log = CallbackList(list(callbacks) + [early_log])
    # A Hugging Face id is downloaded (if needed) and pinned to its commit: config.toml records
    # `org/name@<sha>` (a dataset: `hf://datasets/org/name@<sha>`), so a resume uses the same weights and data.
    config = replace(config, model=pin_model(config.model), data=pin_data(config.data))
    splits = _split_validation(load_run_data(config), config)
    log.on_log(f"Data {config.data}: {splits.format}, {len(splits.train)} train / {len(splits.valid)} valid records")
    if recommend:
        _recommend(config, recommend, splits, world_size, log)
    run_fingerprint = fingerprint(config, splits.fingerprint_files())
    changes = check_resumable(resume_from[0], resume_from[1], config, run_fingerprint,
                              allow_model_change=allow_model_change) if resume_from else {}
    full = config.resolved_fine_tune_type == "full"
    info = read_model_info(config.model)
    dequantize = should_dequantize(config.quantized_base, full, info.num_parameters)
    loaded = load_model(config.model, dequantize=dequantize)
    if dequantize and not full and info.quantization != "none":
        log.on_log("The quantized base is dequantized for training (quantized_base = "
                   f"{config.quantized_base}: MLX runs on the CPU here, where quantized matmuls are far slower). "
                   "Set quantized_base = keep for QLoRA on the quantized weights.")
    log.on_log(f"Model {loaded.info.name}: {loaded.info.architecture}, {loaded.info.num_parameters / 1e6:.0f}M "
               f"parameters, " + ("float weights (not quantized)" if loaded.info.quantization == "none"
                                  else f"quantized {loaded.info.quantization}"))
    mx.random.seed(config.seed)
    adapter_config = prepare_for_training(loaded.model, config)
    adapter_config["base_model"] = str(loaded.info.path)
    if config.gradient_checkpointing:
        recompute_blocks(loaded.model)
    else:  # a no-op without LoRA layers (full fine-tuning, DoRA)
        recompute_swiglu_products(loaded.model)
    method = make_method(config, loaded.tokenizer)
    train_examples, valid_examples, stats = method.prepare(splits)
    for split, split_stats in stats.items():  # grpo leaves long prompts out itself, against its own limit
        note = split_stats.long_rows_note(config.max_seq_length, config.long_rows) \
            if split_stats and config.method != "grpo" else ""
        if note:
            log.on_log(f"Data ({split}): {note}")
    log.on_log(f"Training {trainable_count(loaded.model) / 1e6:.2f}M parameters ({adapter_config['fine_tune_type']}); "
               f"{len(train_examples)} train / {len(valid_examples)} valid examples")
    shape = memory.ModelShape.from_info(read_model_info(config.model), loaded.config, dequantized=dequantize)
    longest = max((method.length(e) for e in train_examples), default=None)
    if "gradient_checkpointing" in recommend and not config.gradient_checkpointing:
        _recommend_checkpointing(config, loaded.model, shape, longest, log)
    estimate = memory.estimate(shape, config, longest)
    log.on_log("Memory estimate:\n" + "\n".join(estimate.lines()))
    if plan_only:
        return estimate
    if not force:
        memory.check_fits(shape, config, longest, memory.available_memory())
    if run_dir is None:
        name = config.run_name or default_run_name(config, loaded.info.name)
        if world_size > 1:
            name = distributed.broadcast_text(name)  # rank 0's clock names the run on every rank
        run_dir = runs_root(config) / name
        if writer and (run_dir / CONFIG_FILE).exists():
            raise UserError(f"Run folder {run_dir} already holds a run. Choose another --run-name, or continue it "
                            f"with `finetune resume {run_dir}`.", field="run_name")
    if world_size > 1:
        _join(log, config, run_dir, run_fingerprint, len(train_examples), len(valid_examples), world_size)
    fresh = writer and not run_dir.exists()
    try:
        if writer:
            run_dir.mkdir(parents=True, exist_ok=True)
            if lock is None:
                lock = RunLock(run_dir).acquire()
            config.save(run_dir / CONFIG_FILE)
            if world_size > 1:
                launch.record_launch(run_dir, world_size)  # launch.json: how to start these processes again
    except OSError as e:
        if resume_from is not None or not fresh:  # an existing run: its folder, not output_dir, is the problem
            raise UserError(f"Cannot write the run folder {run_dir}: {e.strerror or e}. Make it writable, or copy the "
                            "run to a writable place and resume the copy.", field="output_dir") from None
        raise UserError(f"Cannot write the run folder {run_dir}: {e.strerror or e}. Choose a writable output_dir.",
                        field="output_dir") from None
    own = [MetricsWriter(run_dir / "metrics.jsonl"), LogWriter(run_dir / "log.txt"),  # + where a native crash hit
           Heartbeat(run_dir, config.method, loaded.info.name)] if writer else []
    prompts = choose_prompts(config, splits) if writer else []  # answered at every checkpoint (samples.py)
    samples = CheckpointSamples(loaded.model, loaded.tokenizer, prompts, config, method) if prompts else None
    if samples is not None:
        log.on_log(f"{len(prompts)} sample prompt(s) are answered at every checkpoint ({config.sample_max_tokens} "
                   "tokens, greedy; samples.json in each checkpoint)")
    for line in early_log.lines:  # what was said before the run folder existed
        for own_writer in own:
            own_writer.on_log(line)
    try:
        loop = TrainingLoop(config=config, model=loaded.model, method=method, train_examples=train_examples,
                            valid_examples=valid_examples, adapter_config=adapter_config,
                            checkpoints=CheckpointManager(run_dir / "checkpoints", keep_last=config.keep_last)
                            if writer else None,
                            final_dir=run_dir / "final" if writer else None,
                            callbacks=own + list(callbacks) + ([samples] if samples else []),
                            world_size=world_size, rank=rank, run_dir=run_dir if writer else None,
                            fingerprint=run_fingerprint)
    except UserError:  # bad input found late (e.g. too few examples for one step): leave no run folder
        if fresh:
            lock.release()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if samples is not None:
        samples.report = loop.callbacks.on_event
    return Run(config, run_dir, loop, loaded.info.name, stats, lock=lock, fresh=fresh, changes=changes,
               memory=estimate)


def _recommend(config: RunConfig, unset, splits, world_size: int, log) -> None:
    """Fill the unset fields with the recommended values (as the window does) and say which."""
    parameters = read_model_info(config.model).num_parameters
    used = fill_unset(config, unset, parameters, len(splits.train), world_size,
                      [r.data for r in splits.train[:SAMPLE_RECORDS]])
    config.validate()
    if used:
        values = ", ".join(f"{name} = {value}" for name, value in used.items())
        log.on_log(f"Recommended for {config.method} ({config.resolved_fine_tune_type}) on {parameters / 1e6:.0f}M "
                   f"parameters and {len(splits.train)} train records: {values} (set any of them to choose your own)")


def _recommend_checkpointing(config: RunConfig, model, shape, longest, log) -> None:
    """Turn gradient checkpointing on where it at least halves the estimated peak (memory.checkpointing_pays)."""
    pays, without, with_it = memory.checkpointing_pays(shape, config, longest)
    if pays:
        config.gradient_checkpointing = True
        recompute_blocks(model)
        log.on_log(f"Recommended: gradient_checkpointing = true (estimated peak {without / 1e9:.2f} GB without it, "
                   f"{with_it / 1e9:.2f} GB with it, about a third slower a step; set it to false to choose speed)")


def _join(log, config: RunConfig, run_dir: Path, run_fingerprint: dict, n_train: int, n_valid: int,
          world_size: int) -> None:
    """Log which hosts joined and check that every rank is about to run the same thing (collective)."""
    hosts = distributed.hosts()
    log.on_log(f"Distributed run: {world_size} processes joined ("
               + ", ".join(f"rank {r} on {h}" for r, h in enumerate(hosts)) + "); global batch = "
               f"{config.batch_size} per process x {world_size} processes x {config.gradient_accumulation_steps} "
               f"accumulation = {config.batch_size * world_size * config.gradient_accumulation_steps} examples per step")
    settings = {k: v for k, v in config.to_dict().items() if k != "output_dir"}
    distributed.agree({"run name": run_dir.name, "config": settings, "data": run_fingerprint["data"],
                       "model": run_fingerprint["model"]["files"], "examples": [n_train, n_valid],
                       "software versions": versions()})


def train(config: RunConfig, callbacks: list[Callback] | tuple = (), **world) -> TrainResult:
    """Run a new training run to the end (or until a callback asks to stop)."""
    return build_run(config, callbacks, **world).train()


class _Timed(Callback):
    def __init__(self, should_stop):
        self.records: list[dict] = []
        self.stop = should_stop

    def on_step_end(self, metrics: dict) -> None:
        self.records.append(metrics)

    def should_stop(self) -> bool:
        return self.stop()


def measure_speed(config: RunConfig, steps: int = 4, should_stop=lambda: False) -> Rate | None:
    """Time `steps` real optimizer steps of `config` (the Setup tab's time estimate, on first use of a model):
    the same data, model and method, in a throw-away run folder; no checkpoint, evaluation or samples.
    None when `should_stop()` ended it before a step after the first (compiling) one was timed."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="speed-") as folder:
        timed = _Timed(should_stop)
        config = replace(config, max_steps=steps, output_dir=folder, run_name="speed", save_every=0, eval_every=0,
                         val_fraction=0.0, num_samples=0, sample_prompts=[], report_every=1,
                         dpo=replace(config.dpo, precompute_reference=False))
        run = build_run(config, [timed])
        run.loop.checkpoints = run.loop.final_dir = None
        run.loop.valid_examples = []
        run.train()
    rows = config.batch_size * config.gradient_accumulation_steps
    return rate_from_records(timed.records, rows)


def load_run_config(run_dir: Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} is not a run folder (no {CONFIG_FILE}). Pass the folder a run was written to.")
    return RunConfig.load(run_dir / CONFIG_FILE)


def prepare_resume(run_dir: Path, *, max_steps: int | None = None, callbacks=(), checkpoint: Path | None = None,
                   allow_model_change: bool = False, force: bool = False, **world) -> Run:
    """Rebuild a run from its folder and restore its latest (or the given) checkpoint.

    A run stopped before its first checkpoint (killed while loading, say) starts
    again from step 0 in the same folder. Either way a `resumed` event at the
    restored step opens the new records in metrics.jsonl (see `read_metrics`).
    Settings that may change on resume (config.RESUMABLE_CHANGES: max_steps, epochs,
    intervals, samples...) are taken from the run's config.toml as it is now.
    The memory estimate is checked as for a new run (refused above the available memory unless `force`).
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if max_steps is not None:
        config.max_steps = max_steps
    checkpoint = _checked_checkpoint(Path(checkpoint), run_dir, config) if checkpoint else \
        CheckpointManager(run_dir / "checkpoints", writer=world.get("rank", 0) == 0).latest()
    if checkpoint is None and (run_dir / "final").exists():
        raise UserError(f"{run_dir} has no complete checkpoint to resume from; start it again with `finetune train`.")
    if world.get("world_size", 1) > 1:
        distributed.agree({"checkpoint to resume from": checkpoint.name if checkpoint else None})
    state = read_state(checkpoint) if checkpoint is not None else None
    run = build_run(config, callbacks, run_dir=run_dir, resume_from=(checkpoint, state) if state else None,
                    allow_model_change=allow_model_change, force=force, **world)
    try:
        if state is not None:
            run.loop.restore(checkpoint)
            if max_steps is None and not {"max_steps", "epochs"} & set(run.changes):
                run.loop.set_total_steps(state["total_steps"])  # e.g. an earlier `resume --max-steps`
    except BaseException:
        run.release()
        raise
    events = run.loop.callbacks
    events.on_event({"step": run.loop.step, "event": "resumed", "checkpoint": str(checkpoint) if checkpoint else None})
    for name, (before, after) in run.changes.items():
        kind = "model_changed" if name == "model" else "config_changed"  # model: --allow-model-change
        events.on_event({"step": run.loop.step, "event": kind, "field": name, "before": before, "after": after})
    events.on_log(f"Resumed from {checkpoint} at step {run.loop.step} of {run.loop.total_steps}"
                  if checkpoint else f"No checkpoint in {run_dir} yet: starting the run again from step 0")
    return run


def _checked_checkpoint(checkpoint: Path, run_dir: Path, config: RunConfig) -> Path:
    """A `--checkpoint` that exists, is complete, and belongs to this run (same method, model and data)."""
    if not (checkpoint / "trainer_state.json").is_file():
        what = "does not exist" if not checkpoint.exists() else "is not a complete checkpoint (no trainer_state.json)"
        raise UserError(f"The checkpoint {checkpoint} {what}. Pass a step-NNNNNN folder from "
                        f"{run_dir / 'checkpoints'}, or leave --checkpoint out to use the latest.", field="checkpoint")
    saved = read_state(checkpoint).get("config") or {}
    differ = [k for k in ("method", "model", "data") if k in saved and saved[k] != getattr(config, k)]
    if differ:
        theirs = ", ".join(f"{k} {saved[k]!r}" for k in differ)
        ours = ", ".join(f"{k} {getattr(config, k)!r}" for k in differ)
        raise UserError(f"The checkpoint {checkpoint} belongs to another run ({theirs}), not to {run_dir} ({ours}). "
                        f"Resume that checkpoint's own run folder, or pick a checkpoint of this run.",
                        field="checkpoint")
    return checkpoint


def resume(run_dir: Path, *, max_steps: int | None = None, callbacks=(), **kwargs) -> TrainResult:
    """Continue a stopped run exactly where its latest checkpoint left off."""
    return prepare_resume(run_dir, max_steps=max_steps, callbacks=callbacks, **kwargs).train()
