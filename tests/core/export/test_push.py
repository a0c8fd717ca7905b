"""finetune push against the loopback fake Hub (tests/fake_hub.py + fake_hub_upload.py): what lands in the repo
equals a local export, the model card is read back against metrics.jsonl/config.toml, the PNG is decoded here,
the files download again with huggingface_hub, and token/permission/network failures are one clear message."""

import json
import struct
import zlib

import numpy as np
import pytest

from huggingface_hub import snapshot_download

from tests.core.export.test_export import Trained
from tests.fake_hub import fake_hub, hf_cache  # noqa: F401  (fixtures)
from tests.fake_hub_upload import fake_hub_upload  # noqa: F401  (fixture)
from trainer_core import cli
from trainer_core.errors import UserError
from trainer_core.export.exporter import export
from trainer_core.export.model_card import EVAL_COLOUR, TRAIN_COLOUR, hub_id
from trainer_core.export.push import push


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    return Trained(tiny_model_dir, tmp_path_factory.mktemp("push-runs"), "my-run", eval_every=1, val_fraction=0.25)


def read_png(data: bytes) -> np.ndarray:
    """An independent reader for the PNGs written here: chunks with their CRCs, 8-bit RGB, filter 0 rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2) and b"IEND" in chunks
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + 3 * width)
    assert not rows[:, 0].any()
    return rows[:, 1:].reshape(height, width, 3)


def metrics(run_dir, kind):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == kind]


def test_push_adapter_uploads_peft_and_mlx_adapters_with_a_card(run, fake_hub_upload, monkeypatch, tmp_path):
    hub = fake_hub_upload
    monkeypatch.setenv("HF_TOKEN", "hf_alice")
    seen = []
    url = push(run.checkpoint, "alice/my-lora", progress=lambda f, m: seen.append(f))
    assert url == f"{hub.url}/alice/my-lora" and seen == sorted(seen) and seen[-1] == 1.0
    files = hub.repos["alice/my-lora"].files
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "loss.png",
                             "mlx/adapter_config.json", "mlx/adapters.safetensors"]
    local = export(run.checkpoint, "peft", tmp_path / "peft")
    assert files["adapter_model.safetensors"] == (local / "adapter_model.safetensors").read_bytes()
    assert files["mlx/adapters.safetensors"] == (run.checkpoint / "adapters.safetensors").read_bytes()
    assert not hub.repos["alice/my-lora"].private

    card = files["README.md"].decode()
    run_dir = run.checkpoint.parent
    train, evals = metrics(run_dir, "train"), metrics(run_dir, "eval")
    assert evals, "the run must have eval records for the card to show"
    assert f"Final train loss: {train[-1]['loss']:.4f} (step {train[-1]['step']})" in card
    assert f"Final eval loss: {evals[-1]['loss']:.4f} (step {evals[-1]['step']})" in card
    assert "| learning_rate | 0.05 |" in card and "| lora.rank | 4 |" in card and "| method | lora |" in card
    assert "**data**" in card and str(run_dir.parent) not in card  # the dataset by name, no local paths
    assert 'PeftModel.from_pretrained' in card and "mlx_lm.generate" in card and "](loss.png)" in card
    assert card.startswith("---\nlibrary_name: peft\n")

    image = read_png(files["loss.png"])
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert TRAIN_COLOUR in colours and EVAL_COLOUR in colours and (255, 255, 255) in colours

    folder = snapshot_download("alice/my-lora", cache_dir=tmp_path / "cache", token="hf_alice")
    assert (tmp_path / "cache").is_dir() and open(f"{folder}/loss.png", "rb").read() == files["loss.png"]

    commits = len(hub.commits)
    push(run.checkpoint, "alice/my-lora", private=True)  # the same files again: nothing new is sent
    assert all(not added for _, _, added in hub.commits[commits:])


@pytest.mark.parametrize("fmt, options, expected", [("gguf", {"gguf_type": "q8_0"}, "my-run-Q8_0.gguf"),
                                                    ("fused", {"quantize": 8}, "config.json")])
def test_push_gguf_and_fused(run, fake_hub_upload, monkeypatch, fmt, options, expected):
    monkeypatch.setenv("HF_TOKEN", "hf_alice")
    push(run.checkpoint, f"alice/x-{fmt}", fmt=fmt, private=True, **options)
    repo = fake_hub_upload.repos[f"alice/x-{fmt}"]
    assert repo.private and expected in repo.files and "README.md" in repo.files
    card = repo.files["README.md"].decode()
    if fmt == "gguf":
        assert "ollama run hf.co/alice/x-gguf:Q8_0" in card and "library_name: gguf" in card
    else:
        assert json.loads(repo.files["config.json"])["quantization"]["bits"] == 8
        assert 'load("alice/x-fused")' in card


def test_token_and_permission_failures_are_one_message(run, fake_hub_upload, monkeypatch, capsys):
    hub = fake_hub_upload
    with pytest.raises(UserError, match="No Hugging Face token.*hf auth login"):
        push(run.checkpoint, "alice/a")
    assert not any(path == "/api/repos/create" for _, path, _ in hub.requests)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(UserError, match=r"did not accept the token \(401"):
        push(run.checkpoint, "alice/a")
    monkeypatch.setenv("HF_TOKEN", "hf_alice")
    with pytest.raises(UserError, match=r"may not write to bob/a \(403"):
        push(run.checkpoint, "bob/a")
    assert "bob/a" not in hub.repos and "alice/a" not in hub.repos
    for repo in ("no-slash", "a/b/c", "alice/bad name"):
        with pytest.raises(UserError, match="not a Hugging Face repo id"):
            push(run.checkpoint, repo)
    assert cli.main(["push", str(run.checkpoint), "--repo", "bob/a"]) == 2
    err = capsys.readouterr().err
    assert "error: The token may not write to bob/a" in err and "Traceback" not in err


def test_an_unreachable_hub_and_a_full_fine_tune(run, tmp_path, monkeypatch, hf_cache):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_alice")
    with pytest.raises(UserError, match="Cannot reach the Hugging Face Hub at http://127.0.0.1:9"):
        push(run.checkpoint, "alice/a")
    full = tmp_path / "full"
    full.mkdir()
    for name in ("adapters.safetensors", "adapter_config.json"):
        (full / name).write_bytes((run.checkpoint / name).read_bytes())
    config = json.loads((full / "adapter_config.json").read_text())
    (full / "adapter_config.json").write_text(json.dumps({**config, "fine_tune_type": "full"}))
    with pytest.raises(UserError, match="full fine-tune.*--format fused"):
        push(full, "alice/a")


def test_hub_ids_of_base_models(tmp_path):
    assert hub_id("demo") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("Qwen/Qwen3-0.6B@abc123") == "Qwen/Qwen3-0.6B"
    assert hub_id("bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M") == "bartowski/Llama-3.2-1B-Instruct-GGUF"
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert hub_id(str(tmp_path / "org" / "model")) is None and hub_id("/abs/path/x") is None
