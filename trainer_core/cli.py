"""`finetune` / `python -m trainer_core`: the headless program (names fixed in DESIGN.md).

    finetune train [CONFIG.toml] --method ... --model PATH --data PATH [flags] [--set k=v ...]
    finetune resume RUN_DIR [--max-steps N] [--checkpoint CHECKPOINT_DIR] [--force]
    finetune generate --model PATH [--adapter CHECKPOINT_DIR] --prompt TEXT
    finetune export CHECKPOINT_DIR|MODEL --format mlx-lm|fused|peft|gguf|ollama|lmstudio [--out DIR]
                    [--gguf-type T] [--quantize 4|8 [--group-size 64]] [--system TEXT] [--overwrite]
    finetune push CHECKPOINT_DIR --repo USER/NAME [--private] [--format adapter|fused|gguf]

A user mistake prints one paragraph naming the file/line/field and exits 2,
without a traceback. Ctrl-C (or SIGTERM) stops at the next step boundary
after saving a checkpoint; a second Ctrl-C aborts. `--data demo` is the demo
dataset shipped with the program (trainer_core.resources) for the method's
data kind. Every command starts the program log (trainer_core.logging_setup).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
from trainer_core import resources
from trainer_core.config import SCHEDULES, METHODS, RunConfig
from trainer_core.config.recommend import RECOMMENDED
from trainer_core.config.toml_io import data_alias, read_toml
from trainer_core.errors import UserError
from trainer_core.logging_setup import setup_logging

log = logging.getLogger(__name__)
DEMO_DATA = "demo"  # --data demo: the shipped demo dataset for the method

# flag -> RunConfig field, for the top-level flags of `finetune train`
TRAIN_FLAGS = {
    "--method": ("method", str), "--model": ("model", str), "--data": ("data", str),
    "--output-dir": ("output_dir", str), "--run-name": ("run_name", str), "--max-steps": ("max_steps", int),
    "--epochs": ("epochs", int), "--batch-size": ("batch_size", int),
    "--gradient-accumulation-steps": ("gradient_accumulation_steps", int),
    "--learning-rate": ("learning_rate", float), "--lr-schedule": ("lr_schedule", str),
    "--warmup-steps": ("warmup_steps", int), "--max-grad-norm": ("max_grad_norm", float),
    "--weight-decay": ("weight_decay", float), "--max-seq-length": ("max_seq_length", int),
    "--seed": ("seed", int), "--save-every": ("save_every", int), "--eval-every": ("eval_every", int),
}


RECOMMENDED_HELP = """\
Defaults: a field you leave unset (no flag, no --set, not in CONFIG.toml) keeps RunConfig's default shown
above, except these, which start from the values recommended for the method, fine-tune type, model size
and dataset size (the window's too; trainer_core/config/recommend.py), printed when the run starts and
recorded in the run's config.toml:
  learning_rate   full fine-tuning: sft/lora 1e-5, diffusion 2.5e-5, dpo/grpo 1e-6;
                  LoRA/DoRA: sft/lora 2e-4, diffusion 1e-4, dpo 5e-5, grpo 2e-5; halved from 6B parameters
  epochs          3 below 1,000 train records, 2 below 10,000, else 1 (dpo, grpo: 1); max_steps 0.
                  Setting --epochs or --max-steps yourself keeps both as you set them
  warmup_steps    3% of the recommended run's optimizer steps, at most 100
  grpo.rewards    numeric_match when every answer is a number, else normalized_match; plus xml_format
                  (grpo.reward_weights 1, 0.2) when the prompts ask for <answer> tags
  gradient_checkpointing  on when it at least halves the estimated peak memory and saves 2 GB or more
                  (long rows, big batches: about a third slower a step, a fraction of the memory), else off
"""


def recommended_unset(args) -> frozenset[str]:
    """The fields of RECOMMENDED that neither CONFIG.toml, a flag nor --set gives a value."""
    given = {name for _, (name, _) in TRAIN_FLAGS.items() if getattr(args, name) is not None}
    given |= {data_alias(item.partition("=")[0].strip()) for item in args.assignments}
    if args.config:
        for key, value in read_toml(Path(args.config)).items():
            given |= {f"{key}.{leaf}" for leaf in value} if isinstance(value, dict) else {key}
    return frozenset(RECOMMENDED) - given


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune", description="Fine-Tune Studio's headless trainer.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="start a new training run", epilog=RECOMMENDED_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("config", nargs="?", help="a config.toml to start from (flags override it)")
    defaults = RunConfig()
    for flag, (name, kind) in TRAIN_FLAGS.items():
        choices = METHODS if name == "method" else SCHEDULES if name == "lr_schedule" else None
        default = "recommended (below)" if name in RECOMMENDED else repr(getattr(defaults, name))
        train.add_argument(flag, dest=name, type=kind, choices=choices, default=None, help=f"default: {default}")
    train.add_argument("--set", dest="assignments", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="any other config field, e.g. --set lora.rank=16")
    train.add_argument("--dry-run", action="store_true",
                       help="print the plan and the estimated peak memory, then exit without training")
    train.add_argument("--force", action="store_true",
                       help="start even when the estimated peak memory is above what is available")

    resume = sub.add_parser("resume", help="continue a stopped run exactly where it left off")
    resume.add_argument("run_dir")
    resume.add_argument("--max-steps", type=int, default=None, help="extend or shorten the run")
    resume.add_argument("--checkpoint", default=None, metavar="CHECKPOINT_DIR",
                        help="resume from this checkpoint of the run (default: its latest)")
    resume.add_argument("--allow-model-change", action="store_true",
                        help="continue even though the base model's files changed (recorded as an event)")
    resume.add_argument("--force", action="store_true",
                        help="continue even when the estimated peak memory is above what is available")

    generate = sub.add_parser("generate", help="generate text with a model and optional checkpoint")
    generate.add_argument("--model", default=None, help="model folder, .gguf or 'demo' (default: the checkpoint's base)")
    generate.add_argument("--adapter", default=None, help="a checkpoint folder (checkpoints/step-NNNNNN or final/)")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--system", default=None, help="system prompt")
    generate.add_argument("--max-tokens", type=int, default=256)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=0)
    generate.add_argument("--method", choices=METHODS, default=None,
                          help="diffusion: denoise with the masked-diffusion sampler (default: the checkpoint's kind)")
    generate.add_argument("--steps", type=int, default=0, help="diffusion: denoising steps (0 = --max-tokens)")
    generate.add_argument("--block-length", type=int, default=32, help="diffusion: semi-autoregressive block size "
                          "(0 = one block); --top-p/--top-k are not used")

    from trainer_core.export.exporter import FORMATS, GGUF_TYPES, MLX_BITS, MLX_GROUP_SIZES
    export = sub.add_parser("export", help="write a checkpoint as mlx-lm adapters, a fused model, PEFT or GGUF "
                            "(alone, for Ollama or in LM Studio's models folder)")
    export.add_argument("checkpoint", help="a checkpoint folder (checkpoints/step-NNNNNN or final/), or a "
                        "model ('demo', a model folder, a .gguf) to export without fine-tuning")
    export.add_argument("--format", dest="fmt", required=True, choices=FORMATS)
    export.add_argument("--out", default=None, help="a new (or empty) folder to write (lmstudio: the models "
                        "folder to place it in, default LM Studio's)")
    export.add_argument("--system", default=None, help="ollama: the Modelfile's SYSTEM prompt")
    export.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out folder (once the new export is complete)")
    export.add_argument("--model", default=None, help="the base model (default: the checkpoint's base)")
    export.add_argument("--dequantize", action="store_true",
                        help="fused: merge into float weights instead of keeping the base's quantization")
    export.add_argument("--gguf-type", default="f16", choices=GGUF_TYPES,
                        help="gguf: tensor type (q4_k_m, q5_k_m, q6_k need the 'gguf' extra: llama-cpp-python)")
    export.add_argument("--quantize", type=int, default=None, choices=MLX_BITS,
                        help="fused: quantise the merged weights to 4 or 8 bits with mlx-lm (mlx-community style)")
    export.add_argument("--group-size", type=int, default=64, choices=MLX_GROUP_SIZES,
                        help="fused --quantize: weights per quantisation group (default 64, mlx-lm's)")

    from trainer_core.export.push import PUSH_FORMATS
    push = sub.add_parser("push", help="upload a checkpoint to a Hugging Face model repo, with a model card")
    push.add_argument("checkpoint", help="a checkpoint folder (checkpoints/step-NNNNNN or final/)")
    push.add_argument("--repo", required=True, help="the repo to create or update: user/name")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--format", dest="fmt", default="adapter", choices=PUSH_FORMATS,
                      help="adapter: PEFT + mlx-lm adapters (default); fused: an mlx-lm model; gguf: one GGUF file")
    push.add_argument("--gguf-type", default="f16", choices=GGUF_TYPES, help="gguf: tensor type")
    push.add_argument("--quantize", type=int, default=None, choices=MLX_BITS, help="fused: 4 or 8 bits (mlx-lm)")
    return parser


def config_from_args(args) -> RunConfig:
    config = RunConfig.load(args.config) if args.config else RunConfig()
    flags = {name: getattr(args, name) for _, (name, _) in TRAIN_FLAGS.items() if getattr(args, name) is not None}
    data = config.to_dict()
    data.update(flags)
    config = RunConfig.from_dict(data, source="command line")
    if args.assignments:
        config = config.with_overrides(args.assignments)
    if config.data == DEMO_DATA:
        config.data = str(resources.demo_dataset(config.method))
    return config.validate()


def install_stop_handlers(stop, announce: bool = True) -> None:
    """First Ctrl-C / SIGTERM: stop at the next step (checkpoint first); second Ctrl-C: abort."""
    def handler(signum, frame):
        if stop.requested or not stop.training:  # a second request, or nothing to checkpoint yet
            raise KeyboardInterrupt
        stop.request()
        if announce:
            print("\nStopping after this step (saving a checkpoint)… press Ctrl-C again to abort.", file=sys.stderr)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def abort_when_blocked(grace_s: float = 2.0) -> None:
    """Make the second Ctrl-C / SIGTERM end the process even while it waits inside MLX.

    A rank waiting in a collective for a peer that hangs (a stopped process, an unplugged
    cable) never returns to Python, so Python's signal handlers never run. The C-level handler
    still writes each signal to the wakeup fd; a thread counts them and, `grace_s` after the
    second, exits with status 130 if the main thread has not (checkpoints are atomic: the
    last complete one stays valid). Call from the main thread, after install_stop_handlers.
    """
    import os
    import threading
    import time

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def watch():
        received = 0
        while received < 2:
            received += len(os.read(read_fd, 16))
        time.sleep(grace_s)
        print("Aborted while waiting for another process. The last complete checkpoint is intact; continue with "
              "`finetune resume RUN_DIR` on the same processes.", file=sys.stderr, flush=True)
        os._exit(130)

    threading.Thread(target=watch, name="abort-when-blocked", daemon=True).start()


def run_training(args) -> int:
    """train / resume; under mlx.launch or mpirun every process runs this as one rank of a
    data-parallel run (distributed.py): rank 0 reports and writes, other ranks print only errors,
    prefixed with their rank. A lost rank exits 3 with a message, never a hang or a traceback."""
    from trainer_core.distributed import ranks as distributed

    world = distributed.init()
    try:
        return _train_or_resume(args, world)
    except distributed.RankFailure as e:
        print(f"{distributed.message_prefix(world)}error: {e}", file=sys.stderr, flush=True)
        return 3
    except UserError as e:
        print(f"{distributed.message_prefix(world)}error: {e}", file=sys.stderr, flush=True)
        return 2


def _train_or_resume(args, world) -> int:
    from trainer_core import runner
    from trainer_core.data.hub_files import pin_data
    from trainer_core.models.loading import pin_model
    from trainer_core.training.callbacks import StopFlag
    from trainer_core.distributed.launch import StopFile
    from trainer_core.training.progress import TerminalProgress

    stop = StopFlag()
    install_stop_handlers(stop, announce=world.rank == 0)
    if world.distributed:
        abort_when_blocked()
    callbacks = [TerminalProgress(), stop] if world.rank == 0 else [stop]
    callbacks.append(StopFile())  # the GUI launcher's Stop (launch.py)
    ranks = {"world_size": world.size, "rank": world.rank}
    how = f"mlx.launch (the same {world.size} processes) -- finetune resume" if world.distributed else "finetune resume"
    run = None
    try:
        if args.command == "train":  # Hugging Face ids: download first, with progress bars (bytes, speed, ETA)
            pin_model(config_from_args(args).model, show_bars=world.rank == 0)
            pin_data(config_from_args(args).data, show_bars=world.rank == 0)
        if args.command == "train" and args.dry_run:
            runner.plan_run(config_from_args(args), [TerminalProgress(sys.stdout)],  # the plan is the output
                            recommend=recommended_unset(args))
            return 0
        if args.command == "train":
            run = runner.build_run(config_from_args(args), callbacks, force=args.force,
                                   recommend=recommended_unset(args), **ranks)
        else:
            run = runner.prepare_resume(args.run_dir, max_steps=args.max_steps, callbacks=callbacks,
                                        checkpoint=args.checkpoint, allow_model_change=args.allow_model_change,
                                        force=args.force, **ranks)
        result = run.train()
    except KeyboardInterrupt:
        if run is None or not stop.training:
            print("Stopped before training began: nothing was trained or written to resume.", file=sys.stderr)
        else:
            print(f"Aborted. The last complete checkpoint is intact; continue with `{how} {run.run_dir}`.",
                  file=sys.stderr)
        return 130
    if result.status == "stopped" and world.rank == 0:
        print(f"Stopped at step {result.step}/{result.total_steps}; continue with `{how} {run.run_dir}`.",
              file=sys.stderr)
    return 0


def check_generation_flags(args) -> None:
    """Sampling flags within their ranges (argparse checks only the types)."""
    bad = [(args.max_tokens >= 1, "--max-tokens must be at least 1"),
           (args.temperature >= 0, "--temperature must be 0 (greedy) or more"),
           (0 < args.top_p <= 1, "--top-p must be in (0, 1]"), (args.top_k >= 0, "--top-k must be 0 (off) or more"),
           (args.steps >= 0, "--steps must be 0 (= --max-tokens) or more"),
           (args.block_length >= 0, "--block-length must be 0 (one block) or more")]
    problems = [message for ok, message in bad if not ok]
    if problems:
        raise UserError("; ".join(problems) + ".")


def run_generate(args) -> int:
    check_generation_flags(args)
    from trainer_core.generation import diffusion_sampler
    from trainer_core.generation.generate import GenerationSettings, load_for_inference, stream

    if args.method == "diffusion" or (args.method is None and diffusion_sampler.is_diffusion_checkpoint(args.adapter)):
        model = diffusion_sampler.load(args.model, args.adapter)
        settings = diffusion_sampler.DiffusionSettings(args.max_tokens, args.steps, args.block_length, args.temperature)
        pieces = diffusion_sampler.stream(model, args.prompt, settings, system=args.system)
    else:
        loaded = load_for_inference(args.model, args.adapter)
        settings = GenerationSettings(args.max_tokens, args.temperature, args.top_p, args.top_k)
        pieces = stream(loaded, args.prompt, settings, system=args.system)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def run_export(args) -> int:
    from trainer_core.export.exporter import export

    def progress(fraction: float, message: str) -> None:
        print(f"[{fraction:4.0%}] {message}", file=sys.stderr)

    out = export(args.checkpoint, args.fmt, args.out, model=args.model, dequantize=args.dequantize,
                 gguf_type=args.gguf_type, quantize=args.quantize, group_size=args.group_size,
                 overwrite=args.overwrite, system=args.system, progress=progress)
    print(out)
    return 0


def run_push(args) -> int:
    from trainer_core.export.push import push

    def progress(fraction: float, message: str) -> None:
        print(f"[{fraction:4.0%}] {message}", file=sys.stderr)

    print(push(args.checkpoint, args.repo, fmt=args.fmt, private=args.private, gguf_type=args.gguf_type,
               quantize=args.quantize, progress=progress))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("finetune " + args.command)
    try:
        if args.command in ("train", "resume"):
            return run_training(args)
        if args.command == "export":
            return run_export(args)
        if args.command == "push":
            return run_push(args)
        return run_generate(args)
    except UserError as e:
        log.info("exit 2: %s", e)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Aborted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
