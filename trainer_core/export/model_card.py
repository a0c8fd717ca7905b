"""The model card (README.md) and loss plot (loss.png) that `finetune push` uploads with a model.

    write_model_card(folder, checkpoint, repo_id, fmt, file_name=None) -> None

The card says what was trained: base model, dataset, method and hyper-parameters (from the run's
config.toml), final train/eval loss (metrics.jsonl), the loss plot, and how to load the upload
with mlx-lm, PEFT or llama.cpp/Ollama. Local paths are reduced to their last component: a card is
public, the user's folder names need not be. The YAML front matter carries `base_model` when the
base is a Hugging Face id (the Hub then links the model tree) and `library_name`/`tags`.

The plot is drawn here and written with zlib, as the smallest PNG writer: matplotlib/Pillow are
not dependencies and trainer_core never loads Qt.
"""

from __future__ import annotations

import json
import re
import struct
import tomllib
import zlib
from pathlib import Path

import numpy as np

from trainer_core.export.peft import DEMO_HF_REPO

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?(:[\w-]+)?$")
SETTINGS = ("method", "fine_tune_type", "learning_rate", "lr_schedule", "warmup_steps", "max_steps", "epochs",
            "batch_size", "gradient_accumulation_steps", "max_seq_length", "weight_decay", "seed")
TRAIN_COLOUR, EVAL_COLOUR = (31, 119, 180), (255, 127, 14)


def hub_id(model: str | None) -> str | None:
    """The Hugging Face repo a base model comes from ("demo" is SmolLM2-135M-Instruct), else None."""
    if model == "demo":
        return DEMO_HF_REPO
    if model and HF_ID.match(model) and not Path(model).expanduser().exists():
        return re.split(r"[@:]", model)[0]
    return None


def read_history(run_dir: Path) -> tuple[list, list]:
    """([(step, train loss)], [(step, eval loss)]) from metrics.jsonl, the last value of a step kept."""
    series: dict[str, dict[int, float]] = {"train": {}, "eval": {}}
    path = run_dir / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if isinstance(record, dict) and record.get("type") in series and isinstance(record.get("loss"), (int, float)):
            series[record["type"]][int(record.get("step", 0))] = float(record["loss"])
    return tuple(sorted(series[kind].items()) for kind in ("train", "eval"))


def loss_plot_png(train: list, evals: list, width: int = 640, height: int = 320) -> bytes:
    """Train loss (blue line) and eval loss (orange line and dots) over steps, in a grey frame."""
    image = np.full((height, width, 3), 255, np.uint8)
    margin = 12
    image[[margin, height - margin], margin:width - margin] = 160
    image[margin:height - margin, [margin, width - margin]] = 160
    points = train + evals
    if points:
        steps, losses = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
        s0, s1 = steps.min(), max(steps.max(), steps.min() + 1)
        l0, l1 = losses.min(), max(losses.max(), losses.min() + 1e-6)

        def xy(step, loss):
            x = margin + 4 + (step - s0) / (s1 - s0) * (width - 2 * margin - 8)
            y = height - margin - 4 - (loss - l0) / (l1 - l0) * (height - 2 * margin - 8)
            return x, y

        for series, colour in ((train, TRAIN_COLOUR), (evals, EVAL_COLOUR)):
            pixels = [xy(*p) for p in series]
            for (x0, y0), (x1, y1) in zip(pixels, pixels[1:]):
                n = int(max(abs(x1 - x0), abs(y1 - y0))) * 2 + 2
                _dots(image, np.linspace(x0, x1, n), np.linspace(y0, y1, n), colour, 1)
            if series is evals:
                _dots(image, np.array([p[0] for p in pixels]), np.array([p[1] for p in pixels]), colour, 3)
    return png(image)


def _dots(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, colour, radius: int) -> None:
    for dx in range(-radius, radius + 1):
        for dy in range(-radius, radius + 1):
            x = np.clip(np.round(xs).astype(int) + dx, 0, image.shape[1] - 1)
            y = np.clip(np.round(ys).astype(int) + dy, 0, image.shape[0] - 1)
            image[y, x] = colour


def png(image: np.ndarray) -> bytes:
    """An RGB uint8 array [height, width, 3] as PNG bytes (8-bit truecolour, no filter)."""
    height, width, _ = image.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9)) + chunk(b"IEND", b""))


def _public(value) -> str:
    """A setting as shown on the card: paths reduced to their last component."""
    text = str(value)
    return Path(text).name if "/" in text and not hub_id(text) else text


def write_model_card(folder: Path, checkpoint: Path, repo_id: str, fmt: str, file_name: str | None = None) -> None:
    """README.md and loss.png for the upload in `folder` (fmt: adapter, fused or gguf)."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    config_file = run_dir / "config.toml"
    try:
        config = tomllib.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        config = {}  # the card says less; the upload itself does not depend on it
    train, evals = read_history(run_dir)
    (folder / "loss.png").write_bytes(loss_plot_png(train, evals))
    base = str(config.get("model", "")) or None
    base_id = hub_id(base)
    settings = [(key, config[key]) for key in SETTINGS if key in config and config[key] not in ("", None)]
    if config.get("method") in ("lora", "dpo", "grpo", "diffusion") and isinstance(config.get("lora"), dict):
        settings += [(f"lora.{k}", v) for k, v in config["lora"].items() if k in ("rank", "alpha", "dropout",
                                                                               "num_layers", "dora")]
    front = ["---", f"library_name: {'peft' if fmt == 'adapter' else 'mlx' if fmt == 'fused' else 'gguf'}",
             "tags: [fine-tune-studio, mlx" + (", gguf" if fmt == "gguf" else "") + "]"]
    if base_id:
        front.append(f"base_model: {base_id}")
    lines = front + ["---", "", f"# {repo_id.split('/')[-1]}", "",
                     f"Fine-tuned with Fine-Tune Studio from **{base_id or _public(base or 'an unknown base')}** "
                     f"on **{_public(config.get('data', 'an unknown dataset'))}** "
                     f"(run `{run_dir.name}`, checkpoint `{checkpoint.name}`).", "",
                     "| setting | value |", "|---|---|"]
    lines += [f"| {key} | {_public(value)} |" for key, value in settings]
    loss = lambda series: f"{series[-1][1]:.4f} (step {series[-1][0]})" if series else "not recorded"  # noqa: E731
    lines += ["", f"Final train loss: {loss(train)}. Final eval loss: {loss(evals)}.", "",
              "![Training loss (blue) and eval loss (orange) over steps](loss.png)", "", _axes(train + evals),
              "", "## Use it", ""]
    lines += _usage(repo_id, fmt, base_id, file_name)
    if not base_id and fmt == "adapter":
        lines += ["", f"`BASE_MODEL` is the model this was trained from ({_public(base or 'not recorded')})."]
    (folder / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _axes(points: list) -> str:
    if not points:
        return "No losses were recorded."
    steps, losses = [p[0] for p in points], [p[1] for p in points]
    return (f"The plot spans steps {min(steps)} to {max(steps)} (left to right) and loss {min(losses):.4f} "
            f"to {max(losses):.4f} (bottom to top).")


def _usage(repo_id: str, fmt: str, base_id: str | None, file_name: str | None) -> list[str]:
    base = base_id or "BASE_MODEL"
    if fmt == "adapter":
        return ["PEFT (PyTorch):", "```python", "from peft import PeftModel",
                "from transformers import AutoModelForCausalLM",
                f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "{repo_id}")',
                "```", "", "mlx-lm (the `mlx/` folder holds the mlx-lm adapters):", "```bash",
                f"hf download {repo_id} --local-dir adapters",
                f"mlx_lm.generate --model {base} --adapter-path adapters/mlx --prompt \"Hello\"", "```"]
    if fmt == "fused":
        return ["mlx-lm (also LM Studio's MLX engine):", "```python", "from mlx_lm import load, generate",
                f'model, tokenizer = load("{repo_id}")',
                'print(generate(model, tokenizer, prompt="Hello"))', "```"]
    quant = (file_name or "").rsplit("-", 1)[-1].removesuffix(".gguf")
    return ["llama.cpp / Ollama / LM Studio (the GGUF carries the chat template):", "```bash",
            f"llama-cli -hf {repo_id}:{quant}", f"ollama run hf.co/{repo_id}:{quant}", "```",
            f"In LM Studio, search for `{repo_id}`."]
