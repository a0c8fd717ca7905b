"""Every GGUF tensor type: read back with gguf.GGUFReader, dequantised, and each tensor within its
type's error bound of the source weights (bounds derived here from llama.cpp's block formats);
general.* of a base and of a fine-tune; the k-quant and block-size refusals; --overwrite."""

import json
import shutil

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import gguf
from gguf import GGMLQuantizationType as Q

from tests.core.export.arch_folders import make_arch_folder
from tests.core.export.test_gguf_arch import expected_tensors
from tests.tiny_model import make_tiny_llama
from trainer_core import cli, runner
from trainer_core.config import LoraConfig, RunConfig
from trainer_core.errors import UserError
from trainer_core.export.exporter import GGUF_TYPES, export
from trainer_core.export.gguf import LLAMA_CPP_TYPES, PYTHON_TYPES

MATRIX_TYPE = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q5_1": Q.Q5_1, "q4_0": Q.Q4_0}


def error_bound(reference: np.ndarray, qtype: Q) -> np.ndarray:
    """Largest |dequantised - reference| each element may have in `qtype` (rounding of the
    block's float16 scale included)."""
    x = reference.astype(np.float64)
    if qtype == Q.F32:
        return np.zeros_like(x)
    if qtype == Q.F16:
        return np.abs(x) * 2.0 ** -11 + 2.0 ** -25
    if qtype == Q.BF16:
        return np.abs(x) * 2.0 ** -8
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    if qtype == Q.Q8_0:  # d = amax / 127, round to nearest
        bound = np.abs(blocks).max(-1, keepdims=True) / 127 * (0.5 + 127 * 2.0 ** -11)
    elif qtype == Q.Q4_0:  # d = signed max / -8; the opposite extreme clamps to 7 steps: one full step
        bound = np.abs(blocks).max(-1, keepdims=True) / 8 * (1 + 16 * 2.0 ** -11)
    else:  # Q5_1: d = (max - min) / 31 and the minimum, both float16
        low, high = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
        bound = (high - low) / 31 * (0.5 + 31 * 2.0 ** -11) + np.abs(low) * 2.0 ** -11
    return np.broadcast_to(bound, blocks.shape).reshape(x.shape) + 1e-7


def check_file(path, expected: dict, gguf_type: str, tied: bool) -> None:
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.file_type"].contents() == PYTHON_TYPES[gguf_type][1]
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == sorted(expected)
    quantised = MATRIX_TYPE[gguf_type]
    for name, reference in expected.items():
        tensor = tensors[name]
        want = quantised if reference.ndim == 2 else Q.F32
        if quantised in (Q.Q4_0, Q.Q5_1) and name == ("token_embd.weight" if tied else "output.weight"):
            want = Q.Q8_0  # the output matrix is kept at 8 bits
        assert tensor.tensor_type == want, name
        got = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(reference.shape)
        error = np.abs(got.astype(np.float64) - reference)
        assert np.all(error <= error_bound(reference, want)), (name, float(error.max()))
        if want != Q.F32 and reference.ndim == 2 and gguf_type != "bf16":
            assert error.max() > 0  # it really was rounded


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("types-llama"))


def test_the_type_lists_agree():
    assert set(GGUF_TYPES) == set(PYTHON_TYPES) | set(LLAMA_CPP_TYPES)


@pytest.mark.parametrize("gguf_type", list(PYTHON_TYPES))
def test_every_type_within_its_bound(llama, tmp_path, gguf_type):
    out = export(str(llama), "gguf", tmp_path / "out", gguf_type=gguf_type)
    [path] = out.iterdir()
    assert path.name.endswith(f"-{gguf_type.upper()}.gguf")
    check_file(path, expected_tensors(llama, "llama"), gguf_type, tied=False)


@pytest.mark.parametrize("gguf_type", ["q4_0", "q8_0"])
def test_tied_gemma3_keeps_its_embedding_at_8_bits(tmp_path, gguf_type):
    folder = make_arch_folder(tmp_path / "gemma", "gemma3_text")
    out = export(str(folder), "gguf", tmp_path / "out", gguf_type=gguf_type)
    check_file(next(out.iterdir()), expected_tensors(folder, "gemma3_text"), gguf_type, tied=True)


@pytest.mark.parametrize("gguf_type", ["bf16", "q8_0"])
def test_a_bf16_model(tmp_path, gguf_type):
    folder = make_tiny_llama(tmp_path / "bf16", dtype="bfloat16")
    out = export(str(folder), "gguf", tmp_path / "out", gguf_type=gguf_type)
    check_file(next(out.iterdir()), expected_tensors(folder, "llama"), gguf_type, tied=False)


def test_k_quants_without_llama_cpp_name_the_extra(llama, tmp_path, monkeypatch):
    """Where llama-cpp-python is not installed (an optional extra: it builds llama.cpp from source);
    the quantiser itself is tested in test_llama_cpp.py."""
    from trainer_core.export import gguf as gguf_export
    monkeypatch.setattr(gguf_export, "llama_cpp", lambda: None)
    for gguf_type in LLAMA_CPP_TYPES:
        with pytest.raises(UserError, match=rf"{gguf_type} is made by llama.cpp's quantiser.*"
                                            r"pip install 'fine-tune-studio\[gguf\]'"):
            export(str(llama), "gguf", tmp_path / "out", gguf_type=gguf_type)
    assert not (tmp_path / "out").exists()


def test_rows_that_are_not_whole_blocks_are_refused(tmp_path):
    folder = make_arch_folder(tmp_path / "odd", "llama", intermediate_size=80)  # ffn_down rows of 80
    with pytest.raises(UserError, match=r"blk\.0\.ffn_down\.weight has rows of 80 values, not a "
                                        r"multiple of the 32-value blocks of Q4_0"):
        export(str(folder), "gguf", tmp_path / "out", gguf_type="q4_0")
    assert not (tmp_path / "out").exists()
    export(str(folder), "gguf", tmp_path / "out", gguf_type="f16")  # float types have no blocks


def test_general_metadata_of_a_fine_tune_names_the_run_and_its_base(llama, tmp_path):
    base = tmp_path / "SmolThing-Instruct"
    shutil.copytree(llama, base)
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlanguage:\n- en\n---\n# A model\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Tell me {i}?"}, {"role": "assistant", "content": "Paris."}]}) + "\n"
        for i in range(4)))
    config = RunConfig(method="lora", model=str(base), data=str(data), output_dir=str(tmp_path / "runs"),
                       run_name="paris-bot", max_steps=1, batch_size=2, save_every=0, eval_every=0,
                       sample_max_tokens=2, lora=LoraConfig(rank=4, num_layers=1))
    run = runner.build_run(config)
    run.loop.train()
    out = export(run.run_dir / "final", "gguf", tmp_path / "out", gguf_type="q8_0")
    [path] = out.iterdir()
    assert path.name == "paris-bot-Q8_0.gguf"
    fields = gguf.GGUFReader(str(path)).fields
    general = {k: fields[k].contents() for k in fields if k.startswith("general.")}
    assert general["general.name"] == "paris-bot"
    assert general["general.finetune"] == "paris-bot"
    assert general["general.basename"] == "SmolThing"
    assert general["general.languages"] == ["en"]
    assert general["general.license"] == "apache-2.0"
    assert general["general.base_model.count"] == 1
    assert general["general.base_model.0.name"] == "SmolThing Instruct"
    assert general["general.quantization_version"] == gguf.GGML_QUANT_VERSION

    base_out = export(str(base), "gguf", tmp_path / "base-out")  # the base itself: its own name
    base_fields = gguf.GGUFReader(str(next(base_out.iterdir()))).fields
    assert base_fields["general.name"].contents() == "SmolThing Instruct"
    assert base_fields["general.finetune"].contents() == "Instruct"
    assert "general.base_model.count" not in base_fields


def test_overwrite_replaces_only_a_complete_export(llama, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.gguf").write_text("old")
    assert cli.main(["export", str(llama), "--format", "gguf", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err and "Traceback" not in err

    from trainer_core.export import gguf as gguf_export

    def fail(*args, **kwargs):
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as patch:
        patch.setattr(gguf_export.gguf.quants, "quantize", fail)
        with pytest.raises(RuntimeError):
            export(str(llama), "gguf", out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["old.gguf"]  # the old export is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # and nothing half-written beside it
    assert cli.main(["export", str(llama), "--format", "gguf", "--out", str(out), "--overwrite"]) == 0
    [new] = out.iterdir()
    assert new.name.endswith("-F16.gguf")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_base_model_has_no_adapters(llama, tmp_path):
    with pytest.raises(UserError, match="is a model, not a checkpoint: it has no adapters to export as 'peft'"):
        export(str(llama), "peft", tmp_path / "out")
    out = export(str(llama), "fused", tmp_path / "fused")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
