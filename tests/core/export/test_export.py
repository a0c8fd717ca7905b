"""Export: every format loads back (mlx-lm, our GGUF loader, PEFT on transformers) with the
logits of the trained in-memory model; the GGUF has
llama.cpp's layout and types; bad input is a UserError / CLI exit 2; output is atomic."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import trainer_core  # noqa: F401  (OpenBLAS before MLX)
import mlx.core as mx
import mlx.nn as nn
import mlx_lm
from safetensors.numpy import load_file

import gguf  # the PyPI package (test extra): llama.cpp's own GGUF reader
from gguf import GGMLQuantizationType as Q

from tests.core.models.test_gguf import TEXTS
from tests.gguf_files import llama_cpp_permute, write_gguf
from trainer_core import cli, runner
from trainer_core.export import exporter as export_module
from trainer_core.config import LoraConfig, RunConfig
from trainer_core.errors import UserError
from trainer_core.export.exporter import export
from trainer_core.models.loading import load_model

IDS = mx.array([[5, 17, 99, 200, 3, 44, 45, 46, 300, 7, 120, 64]])
ROOT = Path(__file__).resolve().parents[3]


# ---------------------------------------------------------------- trained checkpoints

def write_chat_data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    words = ["fox", "Paris", "island", "purple", "sand", "seven", "spider", "legs"]
    records = [{"messages": [{"role": "user", "content": f"Tell me about the {words[i % 8]}?"},
                             {"role": "assistant", "content": f"The {words[(i * 3) % 8]} is "
                                                              f"{' '.join(words[:2 + i % 5])}."}]}
               for i in range(8)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


class Trained:
    """A finished run: its final/ checkpoint, the in-memory model and that model's logits."""

    def __init__(self, model_dir, root: Path, name: str, **fields):
        config = RunConfig(**{
            "method": "lora", "model": str(model_dir), "data": str(write_chat_data(root / "data")),
            "output_dir": str(root / "runs"), "run_name": name, "max_steps": 3, "batch_size": 4,
            "save_every": 0, "eval_every": 0, "lr_schedule": "constant", "learning_rate": 5e-2, "sample_max_tokens": 4,
            "lora": LoraConfig(rank=4, num_layers=1), **fields})
        run = runner.build_run(config)
        run.train()
        self.base = str(model_dir)
        self.checkpoint = run.run_dir / "final"
        self.model = run.loop.model
        self.model.eval()
        self.logits = np.array(self.model(IDS))
        base_logits = np.array(load_model(self.base, dequantize=fields.get("method") == "sft").model(IDS))
        # the checkpoint must matter, or "same logits" would prove nothing
        assert np.abs(self.logits - base_logits).max() > 1.0


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory):
    """The tiny model as a Q4_1 GGUF file (as llama.cpp writes it), like the demo."""
    path = tmp_path_factory.mktemp("gguf-base") / "tiny-Q4_1.gguf"
    write_gguf(Path(tiny_model_dir), path, Q.Q4_1)
    return path


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tiny_quant_model_dir, tiny_gguf, tmp_path_factory):
    root = tmp_path_factory.mktemp("export-runs")
    return {
        "lora": Trained(tiny_model_dir, root, "lora"),
        "dora": Trained(tiny_model_dir, root, "dora", fine_tune_type="dora",
                        lora=LoraConfig(rank=4, num_layers=-1, targets=["self_attn.q_proj", "self_attn.v_proj",
                                                                        "mlp.down_proj"])),
        "full": Trained(tiny_model_dir, root, "full", method="sft", learning_rate=1e-2),
        "qlora": Trained(tiny_quant_model_dir, root, "qlora", quantized_base="keep"),
        "qdora": Trained(tiny_quant_model_dir, root, "qdora", fine_tune_type="dora", quantized_base="keep"),
        "gguf": Trained(tiny_gguf, root, "gguf-lora", quantized_base="keep"),
    }


def max_diff(a, b) -> float:
    return float(np.abs(np.array(a, dtype=np.float32) - np.array(b, dtype=np.float32)).max())


# ---------------------------------------------------------------- mlx-lm

@pytest.mark.parametrize("name", ["lora", "dora", "qlora", "qdora"])
def test_mlx_lm_adapters_load_in_mlx_lm(runs, tmp_path, name):
    run = runs[name]
    out = export(run.checkpoint, "mlx-lm", tmp_path / "adapters")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapters.safetensors"]
    assert json.loads((out / "adapter_config.json").read_text())["base_model"] == run.base
    model, _ = mlx_lm.load(run.base, adapter_path=str(out))
    assert max_diff(model(IDS), run.logits) < 1e-5


def test_mlx_lm_format_of_a_full_fine_tune_is_a_model_folder(runs, tmp_path):
    out = export(runs["full"].checkpoint, "mlx-lm", tmp_path / "full")
    assert (out / "config.json").is_file() and not (out / "adapters.safetensors").exists()
    model, _ = mlx_lm.load(str(out))
    assert max_diff(model(IDS), runs["full"].logits) < 1e-5


# ---------------------------------------------------------------- fused

def is_quantized(model) -> bool:
    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())


@pytest.mark.parametrize("name, dequantize", [("lora", False), ("dora", False), ("full", False),
                                              ("qlora", True), ("qdora", True)])
def test_fused_folder_gives_the_trained_logits(runs, tmp_path, name, dequantize):
    run = runs[name]
    out = export(run.checkpoint, "fused", tmp_path / "fused", dequantize=dequantize)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    model, tokenizer = mlx_lm.load(str(out))
    assert not any("lora" in type(m).__name__.lower() for _, m in model.named_modules())
    assert not is_quantized(model) and "quantization" not in json.loads((out / "config.json").read_text())
    assert max_diff(model(IDS), run.logits) < 1e-4
    assert tokenizer.encode(TEXTS[2]) == load_model(run.base).tokenizer.encode(TEXTS[2])


@pytest.mark.parametrize("name", ["qlora", "qdora"])
def test_fused_keeps_the_base_quantization(runs, tmp_path, name):
    """Without dequantize, each adapted layer is W + delta re-quantized with the base settings."""
    run = runs[name]
    out = export(run.checkpoint, "fused", tmp_path / "fused")
    config = json.loads((out / "config.json").read_text())
    assert (config["quantization"]["group_size"], config["quantization"]["bits"]) == (32, 4)
    model, _ = mlx_lm.load(str(out))
    layer = model.layers[-1].self_attn.q_proj
    assert isinstance(layer, nn.QuantizedLinear) and (layer.group_size, layer.bits) == (32, 4)
    # the fused weight, computed here from the checkpoint alone (mlx-lm's formulas)
    base = load_model(run.base).model.layers[-1].self_attn.q_proj
    w = mx.dequantize(base.weight, base.scales, base.biases, 32, 4)
    adapters = mx.load(str(run.checkpoint / "adapters.safetensors"))
    prefix = f"model.layers.{len(model.layers) - 1}.self_attn.q_proj"
    scale = json.loads((run.checkpoint / "adapter_config.json").read_text())["lora_parameters"]["scale"]
    w_base = w
    w = w + scale * (adapters[f"{prefix}.lora_b"].T @ adapters[f"{prefix}.lora_a"].T)
    if name == "qdora":
        w = (adapters[f"{prefix}.m"] / mx.linalg.norm(w, axis=1))[:, None] * w
    got = mx.dequantize(layer.weight, layer.scales, layer.biases, 32, 4)
    step = mx.abs(mx.repeat(layer.scales, 32, axis=1))  # one 4-bit step per element
    assert bool(mx.all(mx.abs(got - w) <= step + 1e-6))  # mlx's affine rounding: within a step
    assert float(mx.abs(got - w).mean()) < 0.5 * float(mx.abs(got - w_base).mean())
    # re-quantization noise, but still much nearer the trained model than the base is
    base_logits = np.array(load_model(run.base).model(IDS))
    error = np.abs(np.array(model(IDS)) - run.logits).mean()
    assert error < 0.5 * np.abs(base_logits - run.logits).mean()


@pytest.mark.parametrize("dequantize", [False, True])
def test_fused_from_a_gguf_base_is_an_mlx_lm_folder(runs, tmp_path, dequantize):
    run = runs["gguf"]
    out = export(run.checkpoint, "fused", tmp_path / "fused", dequantize=dequantize)
    model, tokenizer = mlx_lm.load(str(out))
    assert is_quantized(model) != dequantize
    base = load_model(run.base)
    if dequantize:
        assert max_diff(model(IDS), run.logits) < 0.02  # float16, like the GGUF's scales
    else:  # the adapted layers re-quantized: near the trained model, far from the base
        error = np.abs(np.array(model(IDS)) - run.logits).mean()
        assert error < 0.5 * np.abs(np.array(base.model(IDS)) - run.logits).mean()
    for text in TEXTS:
        assert tokenizer.encode(text) == base.tokenizer.encode(text)
    messages = [{"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True) == \
        base.tokenizer.apply_chat_template(messages, add_generation_prompt=True)


# ---------------------------------------------------------------- gguf

@pytest.mark.parametrize("name, gguf_type, tolerance", [
    ("lora", "f32", 1e-4), ("lora", "f16", 0.05), ("dora", "f32", 1e-4), ("full", "f32", 1e-4),
    ("qlora", "f32", 1e-4), ("gguf", "f32", 0.02)])
def test_gguf_reads_back_with_the_trained_logits(runs, tmp_path, name, gguf_type, tolerance):
    run = runs[name]
    out = export(run.checkpoint, "gguf", tmp_path / "gguf", gguf_type=gguf_type)
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"{run.checkpoint.parent.name}-{gguf_type.upper()}.gguf"]  # named after the run
    lm = load_model(str(out / files[0]))
    assert lm.info.quantization == "none"
    assert max_diff(lm.model(IDS), run.logits) < tolerance
    base = load_model(run.base)
    for text in TEXTS:
        assert lm.tokenizer.encode(text) == base.tokenizer.encode(text)
    assert lm.tokenizer.chat_template == base.tokenizer.chat_template


def test_gguf_has_llama_cpp_layout_and_types(runs, tmp_path, tiny_model_dir):
    """Checked with llama.cpp's own gguf-py reader, not with our loader."""
    run = runs["lora"]
    out = export(run.checkpoint, "gguf", tmp_path / "gguf", gguf_type="f16")
    reader = gguf.GGUFReader(str(out / "lora-F16.gguf"))
    fields = reader.fields

    def kind(key):
        return [gguf.GGUFValueType(t).name for t in fields[key].types]

    assert fields["general.architecture"].contents() == "llama"
    assert kind("general.file_type") == ["UINT32"] and fields["general.file_type"].contents() == 1
    assert kind("llama.block_count") == ["UINT32"] and fields["llama.block_count"].contents() == 2
    assert kind("llama.attention.head_count_kv") == ["UINT32"]
    assert kind("llama.rope.freq_base") == ["FLOAT32"]
    assert kind("tokenizer.ggml.add_bos_token") == ["BOOL"]
    assert kind("tokenizer.ggml.eos_token_id") == ["UINT32"]
    assert kind("tokenizer.ggml.token_type") == ["ARRAY", "INT32"]
    assert kind("tokenizer.ggml.tokens") == ["ARRAY", "STRING"]
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert fields["tokenizer.chat_template"].contents().startswith("{% for message in messages %}")
    tokenizer = json.loads((Path(tiny_model_dir) / "tokenizer.json").read_text())
    vocab = sorted(tokenizer["model"]["vocab"], key=tokenizer["model"]["vocab"].get)
    assert fields["tokenizer.ggml.tokens"].contents() == vocab
    assert fields["tokenizer.ggml.token_type"].contents()[:4] == [3, 3, 3, 1]

    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 + 1 + 2 * 9  # embeddings, output norm, output + 9 per block
    assert tensors["blk.0.attn_norm.weight"].tensor_type == Q.F32
    assert tensors["token_embd.weight"].tensor_type == Q.F16
    fused = export(run.checkpoint, "fused", tmp_path / "fused")
    weights = mx.load(str(fused / "model.safetensors"))
    config = json.loads((fused / "config.json").read_text())
    for layer in (0, 1):  # layer 1 carries the adapters
        for proj, heads in (("q", config["num_attention_heads"]), ("k", config["num_key_value_heads"])):
            hf = np.array(weights[f"model.layers.{layer}.self_attn.{proj}_proj.weight"])
            stored = np.array(tensors[f"blk.{layer}.attn_{proj}.weight"].data, dtype=np.float32)
            assert np.allclose(stored, llama_cpp_permute(hf, heads).astype(np.float16), atol=0)
            assert not np.allclose(stored, hf.astype(np.float16), atol=1e-3)  # it was permuted


def test_gguf_from_a_gguf_base_keeps_its_tokenizer_metadata(runs, tiny_gguf, tmp_path):
    out = export(runs["gguf"].checkpoint, "gguf", tmp_path / "gguf", gguf_type="f32")
    ours = gguf.GGUFReader(str(out / "gguf-lora-F32.gguf")).fields
    base = gguf.GGUFReader(str(tiny_gguf)).fields
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.pre", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"):
        assert ours[key].contents() == base[key].contents(), key


# ---------------------------------------------------------------- peft

@pytest.mark.parametrize("name", ["lora", "dora"])
def test_peft_files(runs, tmp_path, name):
    run = runs[name]
    out = export(run.checkpoint, "peft", tmp_path / "peft")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    ours = {k: np.array(v) for k, v in mx.load(str(run.checkpoint / "adapters.safetensors")).items()}
    theirs = load_file(str(out / "adapter_model.safetensors"))
    expected = {}
    for key, value in ours.items():
        module, leaf = key.rsplit(".", 1)
        peft_leaf, transpose = {"lora_a": ("lora_A.weight", True), "lora_b": ("lora_B.weight", True),
                                "m": ("lora_magnitude_vector", False)}[leaf]
        expected[f"base_model.model.{module}.{peft_leaf}"] = value.T if transpose else value
    assert sorted(theirs) == sorted(expected)
    for key, value in expected.items():
        assert np.array_equal(theirs[key], value), key
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_dora"] == (name == "dora")
    assert config["layers_to_transform"] == ([1] if name == "lora" else None)
    assert config["base_model_name_or_path"] == run.base


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_peft_export_loads_in_peft_with_the_trained_logits(runs, tmp_path, name):
    import torch
    import peft
    from transformers import LlamaForCausalLM

    run = runs[name]
    out = export(run.checkpoint, "peft", tmp_path / "peft")
    base = LlamaForCausalLM.from_pretrained(run.base, dtype=torch.float32)
    ids = torch.tensor(np.array(IDS), dtype=torch.long)
    with torch.no_grad():
        base_logits = base(ids).logits.numpy()
        model = peft.PeftModel.from_pretrained(base, str(out)).eval()
        logits = model(ids).logits.numpy()
    assert max_diff(base_logits, run.logits) > 1.0
    assert max_diff(logits, run.logits) < 1e-4


# ---------------------------------------------------------------- errors, atomicity, progress, CLI

def test_errors_name_the_path(runs, tmp_path):
    checkpoint = runs["lora"].checkpoint
    with pytest.raises(UserError, match=f"{tmp_path} is not a checkpoint folder"):
        export(tmp_path, "fused", tmp_path / "out")
    run_dir = checkpoint.parent
    with pytest.raises(UserError, match="looks like a run folder"):
        export(run_dir, "fused", tmp_path / "out")
    with pytest.raises(UserError, match="Unknown export format 'onnx'"):
        export(checkpoint, "onnx", tmp_path / "out")
    with pytest.raises(UserError, match="Unknown GGUF type 'q2_k'"):
        export(checkpoint, "gguf", tmp_path / "out", gguf_type="q2_k")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match=f"{tmp_path / 'full'} is not empty"):
        export(checkpoint, "mlx-lm", tmp_path / "full")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=f"{tmp_path / 'file'} is a file"):
        export(checkpoint, "mlx-lm", tmp_path / "file")
    with pytest.raises(UserError, match=f"Cannot write the export folder {tmp_path / 'file' / 'out'}"):
        export(checkpoint, "mlx-lm", tmp_path / "file" / "out")
    with pytest.raises(UserError, match="full fine-tune, which has no adapters for PEFT"):
        export(runs["full"].checkpoint, "peft", tmp_path / "out")
    other = tmp_path / "starcoder"  # an architecture mlx-lm builds but GGUF export does not write
    shutil.copytree(runs["lora"].base, other)
    (other / "config.json").write_text(json.dumps(
        {**json.loads((other / "config.json").read_text()), "model_type": "starcoder2"}))
    with pytest.raises(UserError, match=f"{other} is a 'starcoder2' model; GGUF export supports llama"):
        export(checkpoint, "gguf", tmp_path / "out", model=str(other))
    assert not (tmp_path / "out").exists()


def test_a_failed_export_leaves_nothing(runs, tmp_path, monkeypatch):
    def fail(loaded, folder):
        (folder / "model.safetensors").write_text("half")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(export_module, "write_model_folder", fail)
    with pytest.raises(RuntimeError):
        export(runs["lora"].checkpoint, "fused", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty").mkdir()  # an empty destination folder is fine, and kept on failure
    with pytest.raises(RuntimeError):
        export(runs["lora"].checkpoint, "fused", tmp_path / "empty")
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]


def test_progress_is_reported_in_order(runs, tmp_path):
    seen = []
    (tmp_path / "out").mkdir()  # an empty folder may be the destination
    export(runs["lora"].checkpoint, "gguf", tmp_path / "out", progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(isinstance(m, str) and m for _, m in seen)
    assert (tmp_path / "out" / "lora-F16.gguf").is_file()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "trainer_core", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_export(runs, tmp_path, capsys):
    done = run_cli("export", runs["lora"].checkpoint, "--format", "mlx-lm", "--out", tmp_path / "a")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a" / "adapters.safetensors").is_file()
    assert done.stdout.strip() == str(tmp_path / "a")

    bad = run_cli("export", tmp_path, "--format", "fused", "--out", tmp_path / "b")
    assert bad.returncode == 2
    assert "is not a checkpoint folder" in bad.stderr and "Traceback" not in bad.stderr

    assert cli.main(["export", str(runs["qlora"].checkpoint), "--format", "fused", "--dequantize",
                     "--out", str(tmp_path / "c")]) == 0
    assert "quantization" not in json.loads((tmp_path / "c" / "config.json").read_text())
    assert cli.main(["export", str(runs["lora"].checkpoint), "--format", "gguf", "--gguf-type", "f32",
                     "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "lora-F32.gguf").is_file()
    assert cli.main(["export", str(runs["lora"].checkpoint), "--format", "peft",
                     "--out", str(tmp_path / "a")]) == 2
    assert "is not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: unknown format
        cli.main(["export", str(runs["lora"].checkpoint), "--format", "onnx", "--out", str(tmp_path / "e")])
    assert exit_info.value.code == 2
