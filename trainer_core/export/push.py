"""`finetune push`: a checkpoint exported, given a model card, and uploaded to a Hugging Face model repo.

    push(checkpoint, repo_id, *, fmt="adapter", private=False, gguf_type="f16", quantize=None,
         progress=None) -> str (the repo's URL)

Formats (PUSH_FORMATS): "adapter" = PEFT adapters at the repo's root (`PeftModel.from_pretrained(base,
repo)`) plus the mlx-lm adapters under mlx/; "fused" = an mlx-lm model folder (`--quantize 4|8` for
mlx-community style); "gguf" = one GGUF file (`--gguf-type`). Each is written by export() into a
temporary folder with README.md and loss.png (model_card.py), then sent by huggingface_hub:
`HfApi.create_repo(exist_ok=True)` and `upload_folder`, which uploads only files the repo does not
already hold. The token is huggingface_hub's own: HF_TOKEN, else the one `hf auth login` stored.
Raises UserError for a bad repo id, no token, a token the Hub refuses (401) or that cannot write
there (403), an unreachable Hub, and everything export() refuses.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from trainer_core.errors import UserError
from trainer_core.export.exporter import Progress, export, read_checkpoint, run_name

PUSH_FORMATS = ("adapter", "fused", "gguf")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
LOGIN_HINT = ("log in with `hf auth login` or set HF_TOKEN to a token with write access "
              "(https://huggingface.co/settings/tokens)")


def push(checkpoint, repo_id: str, *, fmt: str = "adapter", private: bool = False, gguf_type: str = "f16",
         quantize: int | None = None, progress: Progress | None = None) -> str:
    import huggingface_hub

    report = progress or (lambda fraction, message: None)
    if fmt not in PUSH_FORMATS:
        raise UserError(f"Unknown push format {fmt!r}: choose one of {', '.join(PUSH_FORMATS)}.")
    if not REPO_ID.match(repo_id or ""):
        raise UserError(f"--repo {repo_id!r} is not a Hugging Face repo id: write it as user/name "
                        "(or organization/name), letters, digits, '-', '_' and '.'.")
    checkpoint = Path(checkpoint).expanduser()
    adapter_config = read_checkpoint(checkpoint)
    if fmt == "adapter" and adapter_config.get("fine_tune_type") == "full":
        raise UserError(f"{checkpoint} holds a full fine-tune, which has no adapters: push it with "
                        "--format fused or --format gguf.")
    token = huggingface_hub.get_token()
    if not token:
        raise UserError(f"No Hugging Face token to upload {repo_id} with: {LOGIN_HINT}.")
    with tempfile.TemporaryDirectory(prefix="finetune-push-") as tmp:
        folder = Path(tmp) / "upload"
        _export(checkpoint, fmt, folder, gguf_type, quantize, report)
        gguf_file = next((p.name for p in folder.glob("*.gguf")), None)
        from trainer_core.export.model_card import write_model_card
        write_model_card(folder, checkpoint, repo_id, fmt, gguf_file)
        files = [p for p in folder.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        api = huggingface_hub.HfApi(token=token)
        report(0.65, f"Creating {repo_id} on {api.endpoint}")
        with _hub_errors(repo_id, api.endpoint):
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            report(0.7, f"Uploading {len(files)} files ({size / 1e6:,.1f} MB) to {repo_id}")
            api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                              commit_message=f"Fine-Tune Studio: {run_name(checkpoint)} {checkpoint.name} ({fmt})")
    report(1.0, f"Pushed {checkpoint} as {fmt} to {url}")
    return str(url)


def _export(checkpoint: Path, fmt: str, folder: Path, gguf_type: str, quantize: int | None, report: Progress) -> None:
    def part(start: float, share: float) -> Progress:
        return lambda fraction, message: report(start + share * fraction, message)

    if fmt == "adapter":
        export(checkpoint, "peft", folder, progress=part(0.0, 0.3))
        export(checkpoint, "mlx-lm", folder / "mlx", progress=part(0.3, 0.3))
    elif fmt == "fused":
        export(checkpoint, "fused", folder, quantize=quantize, progress=part(0.0, 0.6))
    else:
        export(checkpoint, "gguf", folder, gguf_type=gguf_type, progress=part(0.0, 0.6))


class _hub_errors:
    """huggingface_hub's failures as one UserError naming the repo and what to do."""

    def __init__(self, repo_id: str, endpoint: str):
        self.repo_id, self.endpoint = repo_id, endpoint

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        if error is None or not isinstance(error, Exception):
            return False
        if isinstance(error, OfflineModeIsEnabled):
            raise UserError(f"Cannot push {self.repo_id}: HF_HUB_OFFLINE is set. Unset it to upload.") from None
        if isinstance(error, HfHubHTTPError) and error.response is not None:
            status = error.response.status_code
            said = (getattr(error, "server_message", None) or str(error).splitlines()[0]).strip()
            if status == 401:
                raise UserError(f"Hugging Face did not accept the token (401: {said}); {LOGIN_HINT}.") from None
            if status == 403:
                namespace = self.repo_id.split("/")[0]
                raise UserError(f"The token may not write to {self.repo_id} (403: {said}): use a token with write "
                                f"access to {namespace!r}, or push to your own namespace; {LOGIN_HINT}.") from None
            raise UserError(f"The Hugging Face Hub refused the upload to {self.repo_id} ({status}: {said}).") from None
        # huggingface_hub's HTTP client (httpx2) raises its own transport errors; matched by name so
        # that this does not import the client's private module
        if isinstance(error, OSError) or any(c.__name__ == "TransportError" for c in type(error).__mro__):
            raise UserError(f"Cannot reach the Hugging Face Hub at {self.endpoint} ({error}). Check the "
                            "connection and push again (files already on the Hub are not sent twice).") from None
        return False
