"""Where a GGUF export goes to be used: Ollama and LM Studio.

    modelfile(gguf_name, stops, system=None) -> str      Ollama's Modelfile
    stop_tokens(tokenizer) -> [str]                        end-of-turn tokens for PARAMETER stop
    ollama_create(name, folder) -> str                     runs `ollama create`, or says how to
    lmstudio_models_dir() -> Path                          LM Studio's models folder
    lmstudio_folder(models_dir, model) -> Path             <models>/<publisher>/<model>

The chat template is in the GGUF (tokenizer.chat_template), which Ollama and LM Studio read,
so the Modelfile has no TEMPLATE; its stop parameters are the tokenizer's end-of-sequence ids
and the end-of-turn tokens of common templates that the vocabulary holds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from trainer_core.errors import UserError

PUBLISHER = "fine-tune-studio"  # LM Studio's <publisher> level for our exports
# End-of-turn tokens of ChatML, Llama 3, Gemma, Phi-3, Mistral/Llama 2 and GPT-2 style templates
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>",
               "<|endoftext|>", "</s>")


def stop_tokens(tokenizer) -> list[str]:
    """The text of the tokenizer's eos ids, then the END_OF_TURN tokens it has (no repeats)."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    ids = sorted(getattr(tokenizer, "eos_token_ids", None) or [hf.eos_token_id])
    vocab = hf.get_vocab()
    found = [hf.convert_ids_to_tokens(i) for i in ids if i is not None]
    found += [t for t in END_OF_TURN if t in vocab]
    return list(dict.fromkeys(t for t in found if t))


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile(gguf_name: str, stops: list[str], system: str | None = None) -> str:
    lines = [f"FROM ./{gguf_name}"] + [f"PARAMETER stop {_quoted(s)}" for s in stops]
    if system:
        if '"""' in system:
            raise UserError('The system prompt contains """, which an Ollama Modelfile cannot hold.')
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def ollama_name(name: str) -> str:
    """A name `ollama create` takes: lower case letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._") or "fine-tuned"


def ollama_create(name: str, folder: Path) -> str:
    """Run `ollama create NAME -f Modelfile` in `folder` when ollama is on PATH: its output;
    otherwise the command for the user to run. UserError when ollama fails."""
    command = ["ollama", "create", name, "-f", "Modelfile"]
    if shutil.which("ollama") is None:
        return f"Ollama is not on PATH; to add the model run: cd {folder} && {' '.join(command)}"
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise UserError(f"`{' '.join(command)}` in {folder} failed: {output or done.returncode}. "
                        "Is the Ollama app running? The folder with the GGUF and Modelfile is kept.")
    return output or f"Created the Ollama model {name}: ollama run {name}"


def lmstudio_models_dir() -> Path:
    """LM Studio's models folder: ~/.lmstudio/models (0.3 and later) or ~/.cache/lm-studio/models
    (earlier), whichever exists; the first when neither does."""
    candidates = [Path.home() / ".lmstudio" / "models", Path.home() / ".cache" / "lm-studio" / "models"]
    return next((p for p in candidates if p.is_dir()), candidates[0])


def lmstudio_folder(models_dir: Path, model: str) -> Path:
    """<models>/<publisher>/<model>: the layout LM Studio lists models from."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-.") or "fine-tuned"
    return Path(models_dir).expanduser() / PUBLISHER / f"{safe}-GGUF"
