"""Broken model folders and files end in a UserError naming the path, never another exception.

tests/core/models/test_models.py and tests/core/models/test_gguf.py cover the named cases (no config.json, no or
truncated weights, unknown model_type, wrong shapes, missing tokenizer, truncated GGUF,
unsupported GGUF arch/type). Here: the remaining named cases, then hypothesis over random
truncations and byte flips of the tiny model's safetensors, config.json, tokenizer.json and
GGUF files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gguf_files import write_gguf
from trainer_core.errors import UserError
from trainer_core.models.loading import load_model, read_model_info

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
COUNTS: dict[str, int] = {}


def copy(folder, dest) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    return Path(shutil.copytree(folder, dest))


def loads_or_user_error(path: Path, function=load_model):
    try:
        result = function(str(path))
    except UserError as e:
        assert str(path) in str(e), str(e)
        COUNTS["user_error"] = COUNTS.get("user_error", 0) + 1
        return None
    COUNTS["loaded"] = COUNTS.get("loaded", 0) + 1
    return result


def _write(name, content):
    def breaker(folder):
        (folder / name).write_bytes(content)
    return breaker


def _config(change):
    def breaker(folder):
        config = json.loads((folder / "config.json").read_text())
        change(config)
        (folder / "config.json").write_text(json.dumps(config))
    return breaker


def _weights_as_folder(folder):
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()


def _empty(folder):
    for p in folder.iterdir():
        p.unlink()


@pytest.mark.parametrize("breaker, words", [
    (_write("config.json", b"{not json"), "config.json"),
    (_write("config.json", b"\xff\xfe\x00garbage"), "config.json"),
    (_write("config.json", b"[1, 2, 3]"), "model_type"),
    (_write("config.json", b""), "config.json"),
    (_config(lambda c: c.pop("hidden_size")), "config.json"),
    (_config(lambda c: c.update(hidden_size="big")), "config.json"),
    (_config(lambda c: c.update(num_hidden_layers=-1)), "config.json"),
    (_config(lambda c: c.update(model_type=None)), "model_type"),
    (_write("tokenizer.json", b"{not json"), "tokenizer"),
    (_write("tokenizer.json", b'{"model": {"type": "BPE"}}'), "tokenizer"),
    (_write("tokenizer_config.json", b"{not json"), "tokenizer"),
    (_weights_as_folder, "model.safetensors"),
    (_empty, "config.json"),
], ids=["config-not-json", "config-bytes", "config-list", "config-empty", "config-no-hidden", "config-str-hidden",
        "config-negative-layers", "config-null-type", "tokenizer-not-json", "tokenizer-no-vocab",
        "tokenizer-config-not-json", "weights-folder", "empty-folder"])
def test_broken_folder_names_the_path(tiny_model_dir, tmp_path, breaker, words):
    folder = copy(tiny_model_dir, tmp_path / "model")
    breaker(folder)
    with pytest.raises(UserError) as err:
        load_model(str(folder))
    assert str(folder) in str(err.value) and words in str(err.value)


@pytest.mark.parametrize("content", [b"", b"GGUF", b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40, b"\x00" * 100],
                         ids=["empty", "magic-only", "huge-counts", "zeros"])
@pytest.mark.parametrize("function", [load_model, read_model_info])
def test_tiny_or_garbage_gguf_is_a_user_error(tmp_path, content, function):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(UserError, match="GGUF") as err:
        function(str(path))
    assert str(path) in str(err.value)


# ---- hypothesis: random truncations and byte flips ------------------------------------------------

FLIPS = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4)


def mutate(data: bytes, flips, head: int | None = None) -> bytes:
    """Overwrite bytes at relative positions (within the first `head` bytes when given)."""
    out = bytearray(data)
    span = min(head or len(out), len(out))
    for where, byte in flips:
        out[int(where * span)] = byte
    return bytes(out)


@pytest.fixture(scope="module")
def originals(tiny_model_dir, tmp_path_factory):
    folder = Path(tiny_model_dir)
    gguf_path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    from gguf import GGMLQuantizationType as Q
    write_gguf(folder, gguf_path, Q.Q8_0)
    weights = (folder / "model.safetensors").read_bytes()
    header = 8 + int.from_bytes(weights[:8], "little")
    return {"folder": folder, "weights": weights, "weights_header": header, "gguf": gguf_path.read_bytes()}


@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True) | st.none(), flips=FLIPS | st.just([]), in_header=st.booleans())
def test_safetensors_mutations(originals, tmp_path_factory, cut, flips, in_header):
    COUNTS["safetensors"] = COUNTS.get("safetensors", 0) + 1
    folder = tmp_path_factory.getbasetemp() / "fuzz_st"
    if not folder.exists():
        copy(originals["folder"], folder)
    data = mutate(originals["weights"], flips, originals["weights_header"] if in_header else None)
    if cut is not None:
        data = data[:int(cut * len(data))]
    (folder / "model.safetensors").write_bytes(data)
    for function in (read_model_info, load_model):
        loads_or_user_error(folder, function)


@FUZZ
@given(name=st.sampled_from(["config.json", "tokenizer.json", "tokenizer_config.json"]),
       cut=st.floats(0, 1, exclude_max=True) | st.none(), flips=FLIPS | st.just([]))
def test_json_file_mutations(originals, tmp_path_factory, name, cut, flips):
    COUNTS["json"] = COUNTS.get("json", 0) + 1
    folder = tmp_path_factory.getbasetemp() / "fuzz_json"
    shutil.rmtree(folder, ignore_errors=True)
    copy(originals["folder"], folder)
    data = (folder / name).read_bytes()
    data = mutate(data, flips)
    if cut is not None:
        data = data[:int(cut * len(data))]
    (folder / name).write_bytes(data)
    loads_or_user_error(folder)


@pytest.mark.parametrize("dims", [(0, 64), (128, 32), (32, 128), (16, 256)])
def test_gguf_tensor_with_impossible_dimensions(originals, tmp_path, dims):
    """A 2-D tensor's dimensions rewritten in the header (cases the fuzz test below found: a zero dimension, a
    quantization group size MLX has no kernel for, a reshape that cannot be done)."""
    from gguf import GGUFReader
    source = tmp_path / "source.gguf"
    source.write_bytes(originals["gguf"])
    tensor = next(t for t in GGUFReader(str(source)).tensors if len(t.shape) == 2)
    start = tensor.field.offset + 8 + len(tensor.name.encode()) + 4  # after the name and the dimension count
    data = bytearray(originals["gguf"])
    data[start:start + 16] = np.array(dims, np.uint64).tobytes()
    path = tmp_path / "broken.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="broken.gguf"):
        load_model(str(path))


@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True) | st.none(), flips=FLIPS | st.just([]),
       head=st.sampled_from([64, 4096, None]))
def test_gguf_mutations(originals, tmp_path_factory, cut, flips, head):
    COUNTS["gguf"] = COUNTS.get("gguf", 0) + 1
    path = tmp_path_factory.getbasetemp() / "fuzz.gguf"
    data = mutate(originals["gguf"], flips, head)
    if cut is not None:
        data = data[:int(cut * len(data))]
    path.write_bytes(data)
    for function in (read_model_info, load_model):
        loads_or_user_error(path, function)


def test_report_counts():
    cases = {k: v for k, v in COUNTS.items() if k not in ("loaded", "user_error")}
    print(f"model file fuzz cases: {cases} = {sum(cases.values())}; "
          f"loads {COUNTS.get('loaded', 0)}, user errors {COUNTS.get('user_error', 0)}")
