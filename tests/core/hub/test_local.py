"""Models already on the computer: fake LM Studio and Ollama folders and a pre-filled Hugging Face
cache, listed with the path that trains them, or greyed with the reason."""

import json
import shutil
from pathlib import Path

import pytest

from tests.core.hub.test_download import folder_files
from tests.fake_hub import fill_cache
from tests.gguf_files import write_gguf
from trainer_core.hub.local import find_local_models, gguf_architecture
from trainer_core.models.loading import load_model, read_model_info


@pytest.fixture
def machine(tmp_path, monkeypatch, hf_cache, tiny_model_dir):
    """A home folder with LM Studio and Ollama models, and a Hugging Face cache."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    gguf = tmp_path / "tiny.gguf"
    write_gguf(Path(tiny_model_dir), gguf)
    falcon = tmp_path / "falcon.gguf"
    write_gguf(Path(tiny_model_dir), falcon, arch="falcon")

    lms = home / ".lmstudio" / "models"
    (lms / "lmstudio-community" / "Tiny-GGUF").mkdir(parents=True)
    shutil.copy(gguf, lms / "lmstudio-community" / "Tiny-GGUF" / "Tiny-Q8_0.gguf")
    shutil.copy(falcon, lms / "lmstudio-community" / "Tiny-GGUF" / "Falcon-Q8_0.gguf")
    shutil.copytree(tiny_model_dir, lms / "mlx-community" / "Tiny-4bit")
    old = home / ".cache" / "lm-studio" / "models" / "someone" / "Old"
    old.mkdir(parents=True)
    (old / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (old / "pytorch_model.bin").write_bytes(b"\0")

    ollama = home / ".ollama" / "models"
    digest = "sha256:" + "1" * 64
    (ollama / "blobs").mkdir(parents=True)
    shutil.copy(gguf, ollama / "blobs" / digest.replace(":", "-"))
    manifest = {"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": gguf.stat().st_size},
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "2" * 64, "size": 10}]}
    for namespace, tag in (("library", "latest"), ("someone", "q8")):
        path = ollama / "manifests" / "registry.ollama.ai" / namespace / "tiny" / tag
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(manifest))
    gone = ollama / "manifests" / "registry.ollama.ai" / "library" / "gone" / "7b"
    gone.parent.mkdir(parents=True)
    gone.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.model",
                                            "digest": "sha256:" + "3" * 64}]}))

    fill_cache(hf_cache, "org/tiny", folder_files(tiny_model_dir))
    fill_cache(hf_cache, "org/tiny-GGUF", {"tiny-Q8_0.gguf": gguf.read_bytes()}, sha="c" * 40)
    return home


def test_finds_every_source_with_reasons(machine):
    found = {(m.source, m.name): m for m in find_local_models()}
    assert set(found) == {
        ("Hugging Face cache", "org/tiny"), ("Hugging Face cache", "org/tiny-GGUF:Q8_0"),
        ("LM Studio", "lmstudio-community/Tiny-GGUF/Tiny-Q8_0.gguf"),
        ("LM Studio", "lmstudio-community/Tiny-GGUF/Falcon-Q8_0.gguf"),
        ("LM Studio", "mlx-community/Tiny-4bit"), ("LM Studio", "someone/Old"),
        ("Ollama", "tiny:latest"), ("Ollama", "someone/tiny:q8"), ("Ollama", "gone:7b")}
    assert "'falcon' is not supported" in found["LM Studio", "lmstudio-community/Tiny-GGUF/Falcon-Q8_0.gguf"].reason
    assert "only PyTorch .bin" in found["LM Studio", "someone/Old"].reason
    assert "missing" in found["Ollama", "gone:7b"].reason
    trainable = [m for m in found.values() if m.trainable]
    assert len(trainable) == 6 and list(find_local_models())[:6] == sorted(
        trainable, key=lambda m: (m.source, m.name.lower()))
    assert found["Hugging Face cache", "org/tiny-GGUF:Q8_0"].spec == "org/tiny-GGUF:Q8_0"


def test_every_trainable_entry_loads(machine):
    for entry in find_local_models():
        if entry.trainable:
            info = read_model_info(entry.spec)
            assert info.architecture == "llama" and info.num_layers == 2, entry
    ollama = next(m for m in find_local_models() if m.name == "tiny:latest")
    assert load_model(ollama.spec).info.is_gguf  # a blob without the .gguf name


def test_nothing_installed_is_an_empty_list(tmp_path, monkeypatch, hf_cache):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert find_local_models() == []


def test_gguf_architecture_reads_only_the_first_key(tmp_path, tiny_model_dir):
    path = tmp_path / "m.gguf"
    write_gguf(Path(tiny_model_dir), path, arch="qwen3")
    assert gguf_architecture(path) == "qwen3"
    path.write_bytes(b"GGUF" + b"\0" * 8)
    assert gguf_architecture(path) is None
