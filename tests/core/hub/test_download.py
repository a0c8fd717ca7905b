"""Hugging Face ids as model paths, against a loopback fake Hub (tests/fake_hub.py) and pre-filled
cache folders: what is downloaded, progress, cancel and resume, offline use, and one message per
failure (404, gated 401/403, private, revision, only .bin, disk space, disk full)."""

import errno
from pathlib import Path

import pytest

import huggingface_hub.constants

from tests.fake_hub import fill_cache
from trainer_core.errors import UserError
from trainer_core.hub import download
from trainer_core.hub.download import DownloadCancelled, resolve
from trainer_core.models.loading import load_model, pin_model, read_model_info

EXTRA = {"README.md": b"# tiny", "pytorch_model.bin": b"\0" * 1000, "original/consolidated.pth": b"\0" * 10}


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def downloads(hub) -> list[str]:
    return sorted(path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path, _ in hub.requests
                  if method == "GET" and "/resolve/" in path)


def test_id_downloads_only_what_training_needs(fake_hub, tiny_model_dir):
    repo = fake_hub.add_repo("org/tiny", {**folder_files(tiny_model_dir), **EXTRA})
    seen = []
    resolved = resolve("org/tiny", progress=lambda done, total: seen.append((done, total)))
    assert downloads(fake_hub) == sorted(folder_files(tiny_model_dir))  # no README, .bin, .pth
    assert resolved.model_id.revision == repo.sha and resolved.spec == f"org/tiny@{repo.sha}"
    assert Path(resolved.path).is_relative_to(fake_hub.cache)  # the standard cache, shared
    total = sum(len(d) for d in folder_files(tiny_model_dir).values())
    assert seen and seen[-1] == (total, total)
    info = read_model_info("org/tiny")
    assert info.name == "tiny" and info.architecture == "llama"
    lm = load_model("org/tiny")
    assert lm.tokenizer.encode("hello") == load_model(str(tiny_model_dir)).tokenizer.encode("hello")


def test_a_pinned_cached_id_makes_no_request(fake_hub, tiny_model_dir):
    fake_hub.add_repo("org/tiny", folder_files(tiny_model_dir))
    pinned = pin_model("org/tiny")
    fake_hub.requests.clear()
    assert pin_model(pinned) == pinned and load_model(pinned).info.architecture == "llama"
    assert fake_hub.requests == []
    assert pin_model(str(tiny_model_dir)) == str(tiny_model_dir) and pin_model("demo") == "demo"


def test_offline_uses_the_cache_or_says_so(hf_cache, tiny_model_dir):
    assert huggingface_hub.constants.is_offline_mode()  # the tests' default
    with pytest.raises(UserError, match=r"'org/tiny' is not in the Hugging Face cache .*HF_HUB_OFFLINE") as err:
        read_model_info("org/tiny")
    assert str(hf_cache) in str(err.value)
    fill_cache(hf_cache, "org/tiny", folder_files(tiny_model_dir), sha="b" * 40)
    assert read_model_info("org/tiny").num_layers == 2
    assert pin_model("org/tiny") == "org/tiny@" + "b" * 40


def test_no_network_uses_the_cache_or_says_so(fake_hub, tiny_model_dir, monkeypatch):
    fake_hub.stop()  # nothing listens any more
    with pytest.raises(UserError, match="cannot be reached"):
        resolve("org/tiny")
    fill_cache(fake_hub.cache, "org/tiny", folder_files(tiny_model_dir))
    assert resolve("org/tiny").model_id.revision == "a" * 40


@pytest.mark.parametrize("spec, repo_kw, token, message", [
    ("org/missing", None, None, r"'org/missing' was not found on Hugging Face \(check the spelling\).*/org/missing"),
    ("org/secret", dict(private=True, allowed_tokens={"good"}), "bad",
     r"'org/secret' was not found on Hugging Face.*hf auth login"),
    ("org/gated", dict(gated=True, allowed_tokens={"good"}), None, r"gated: open http.*/org/gated.*accept its licence"),
    ("org/gated", dict(gated=True, allowed_tokens={"good"}), "bad", r"gated: open .*/org/gated"),
    ("org/tiny@v9", {}, None, r"no revision 'v9'"),
])
def test_hub_errors_are_one_message(fake_hub, tiny_model_dir, monkeypatch, spec, repo_kw, token, message):
    if repo_kw is not None:
        fake_hub.add_repo(spec.split("@")[0], folder_files(tiny_model_dir), **repo_kw)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(UserError, match=message):
        resolve(spec)
    assert not list(fake_hub.cache.rglob("*.safetensors"))


def test_the_right_token_opens_a_gated_repo(fake_hub, tiny_model_dir, monkeypatch):
    fake_hub.add_repo("org/gated", folder_files(tiny_model_dir), gated=True, allowed_tokens={"good"})
    monkeypatch.setenv("HF_TOKEN", "good")
    assert (resolve("org/gated").path / "config.json").is_file()


def test_only_pytorch_weights_are_explained(fake_hub):
    fake_hub.add_repo("org/old", {"config.json": b"{}", "pytorch_model.bin": b"\0" * 10})
    with pytest.raises(UserError, match=r"only PyTorch weights \(\.bin\).*mlx-community"):
        resolve("org/old")


def test_gguf_repo_downloads_one_quantization(fake_hub):
    files = {f"Qwen3-0.6B-{q}.gguf": q.encode() * 100 for q in ("Q2_K", "Q4_K_M", "Q8_0")}
    fake_hub.add_repo("org/gguf", {**files, "README.md": b"x"})
    assert resolve("org/gguf").path.name == "Qwen3-0.6B-Q4_K_M.gguf"  # the default
    assert downloads(fake_hub) == ["Qwen3-0.6B-Q4_K_M.gguf"]
    picked = resolve("org/gguf:q8_0")
    assert picked.path.name == "Qwen3-0.6B-Q8_0.gguf" and picked.spec.endswith(":Q8_0")
    with pytest.raises(UserError, match="no GGUF file for 'IQ1_S'. It has: Q2_K, Q4_K_M, Q8_0"):
        resolve("org/gguf:IQ1_S")


def test_cancel_stops_and_a_new_attempt_fetches_only_what_is_missing(fake_hub):
    big = bytes(range(256)) * 4096  # 1 MiB, served at 2 MiB/s
    fake_hub.add_repo("org/big", {"config.json": b"{}", "model.safetensors": big})
    fake_hub.bytes_per_second = 2 * 2**20
    seen = []

    repo = fake_hub.cache / "models--org--big"  # (glob, not rglob: download threads add and remove tmp folders)

    def cancel():  # once the small file is in and the big one under way
        return len(seen) >= 3 and any(repo.glob("snapshots/*/config.json"))

    with pytest.raises(DownloadCancelled):
        resolve("org/big", progress=lambda done, total: seen.append(done), cancel=cancel)
    assert 0 < seen[-1] < len(big) + 2
    assert not list(repo.glob("blobs/*.incomplete"))  # nothing half-written is left
    fake_hub.bytes_per_second = None
    fake_hub.requests.clear()
    assert (resolve("org/big").path / "model.safetensors").read_bytes() == big
    assert downloads(fake_hub) == ["model.safetensors"]  # config.json was already complete


def test_an_interrupted_download_resumes(fake_hub):
    """huggingface_hub resumes a cut connection itself, from where it stopped (a Range request)."""
    data = bytes(range(256)) * 2048
    fake_hub.add_repo("org/big", {"model-q.gguf": data})
    fake_hub.cut_after = 100_000
    assert resolve("org/big").path.read_bytes() == data
    assert [r for _, _, r in fake_hub.requests if r]


def test_not_enough_disk_space_downloads_nothing(fake_hub, tiny_model_dir, monkeypatch):
    fake_hub.add_repo("org/tiny", folder_files(tiny_model_dir))
    monkeypatch.setattr(download, "_free_bytes", lambda path: 10 * 2**20)
    with pytest.raises(UserError, match=r"needs 0\.\d\d GB, but only 0\.01 GB is free .*HF_HOME"):
        resolve("org/tiny")
    assert downloads(fake_hub) == []


def test_a_full_disk_removes_partial_files(fake_hub):
    fake_hub.add_repo("org/big", {"model-q.gguf": b"\1" * 2**20})
    fake_hub.bytes_per_second = 8 * 2**20

    def disk_full(done, total):
        if done > 100_000:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match="disk filled up.*partial files were removed"):
        resolve("org/big", progress=disk_full)
    assert not list((fake_hub.cache / "models--org--big").glob("blobs/*.incomplete"))


def test_not_an_id():
    with pytest.raises(UserError, match="does not exist.*Hugging Face id"):
        read_model_info("no/such/folder/anywhere")
