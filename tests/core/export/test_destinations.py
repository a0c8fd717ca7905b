"""Send to Ollama (GGUF + Modelfile, `ollama create` run through a stand-in ollama on PATH, or
the command shown) and to LM Studio (<models>/<publisher>/<model>/<file>.gguf)."""

import os
import stat

import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import gguf

from tests.tiny_model import make_tiny_llama
from trainer_core import cli
from trainer_core.errors import UserError
from trainer_core.export.destinations import modelfile
from trainer_core.export.exporter import export


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("dest") / "Tiny-Chat")


def fake_ollama(bin_dir, log, code=0):
    """An `ollama` that records its arguments and folder, as the real one's create would run."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "ollama"
    script.write_text(f'#!/bin/sh\necho "$PWD $*" > {log}\necho "success"\nexit {code}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_ollama_folder_and_command_without_ollama(llama, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    seen = []
    out = export(str(llama), "ollama", tmp_path / "ollama", gguf_type="q8_0", system="Answer briefly.",
                 progress=lambda f, m: seen.append(m))
    [gguf_file] = out.glob("*.gguf")
    assert gguf.GGUFReader(str(gguf_file)).fields["general.file_type"].contents() == 7  # Q8_0
    assert (out / "Modelfile").read_text() == (
        f"FROM ./{gguf_file.name}\n"
        'PARAMETER stop "<|im_end|>"\n'       # the tokenizer's eos
        'PARAMETER stop "<|endoftext|>"\n'    # an end-of-turn token the vocabulary has
        'SYSTEM """Answer briefly."""\n')
    assert f"cd {out} && ollama create tiny-chat -f Modelfile" in seen[-1]


def test_ollama_create_runs_when_ollama_is_on_path(llama, tmp_path, monkeypatch):
    fake_ollama(tmp_path / "bin", tmp_path / "ollama.log")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    seen = []
    out = export(str(llama), "ollama", tmp_path / "ollama", progress=lambda f, m: seen.append(m))
    assert (tmp_path / "ollama.log").read_text().split() == [str(out), "create", "tiny-chat", "-f", "Modelfile"]
    assert seen[-1].endswith("success")
    fake_ollama(tmp_path / "bin", tmp_path / "ollama.log", code=1)
    with pytest.raises(UserError, match="ollama create tiny-chat -f Modelfile` in .* failed: success"):
        export(str(llama), "ollama", tmp_path / "again")
    assert (tmp_path / "again" / "Modelfile").is_file()  # kept, so the user can retry by hand


def test_modelfile_refuses_a_system_prompt_it_cannot_quote():
    with pytest.raises(UserError, match='contains """'):
        modelfile("m.gguf", [], 'say """hi"""')


def test_lmstudio_places_the_gguf_where_lm_studio_lists_models(llama, tmp_path, monkeypatch):
    out = export(str(llama), "lmstudio", tmp_path / "models", gguf_type="q4_0")
    assert out == tmp_path / "models" / "fine-tune-studio" / "Tiny-Chat-GGUF"
    assert [p.name for p in out.iterdir()] == ["Tiny-Chat-Q4_0.gguf"]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no LM Studio folder yet: ~/.lmstudio/models
    assert cli.main(["export", str(llama), "--format", "lmstudio"]) == 0
    placed = tmp_path / "home" / ".lmstudio" / "models" / "fine-tune-studio" / "Tiny-Chat-GGUF"
    assert [p.name for p in placed.iterdir()] == ["Tiny-Chat-F16.gguf"]
    assert cli.main(["export", str(llama), "--format", "lmstudio"]) == 2  # already there
    assert cli.main(["export", str(llama), "--format", "lmstudio", "--overwrite"]) == 0


def test_other_formats_need_out(llama, capsys):
    assert cli.main(["export", str(llama), "--format", "gguf"]) == 2
    assert "Choose the folder to export 'gguf' into (--out DIR)" in capsys.readouterr().err
