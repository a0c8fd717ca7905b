"""GGUF load time and peak memory: a Q4_K_M-style file against Q4_0 and F16 files of the same model.

The model is a random Llama written by this script (not a downloaded one): hidden 1024, 12 layers,
intermediate 2816, 16 heads / 4 KV heads, the tests' tiny BPE vocabulary -- about 165 M parameters.
"Q4_K_M-style": matrices Q4_K and the token embedding Q6_K (llama.cpp's Q4_K_M also puts half of
ffn_down/attn_v in Q6_K), as random valid blocks (gguf-py cannot quantize K-quants). Each
measurement runs in a fresh process: peak RSS (ru_maxrss) and MLX's peak memory are that load's.

    .venv/bin/python bench/gguf_load.py [--workdir /tmp/bench-gguf]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16,
             num_key_value_heads=4, head_dim=64)
FILES = {"Q4_K_M-style": ("Q4_K", "Q6_K"), "Q4_0": ("Q4_0", "Q8_0"), "F16": ("F16", None)}

MEASURE = """
import json, resource, sys, time
t0 = time.perf_counter()
import trainer_core, mlx.core as mx
from trainer_core.models.loading import load_model, read_model_info
import mlx_lm.utils, transformers  # what a load imports lazily, so that load_s is the load itself
rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
t1 = time.perf_counter()
info = read_model_info(sys.argv[1])
t2 = time.perf_counter()
lm = load_model(sys.argv[1], dequantize=sys.argv[2] == "float")
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "header_s": t2 - t1, "load_s": t3 - t2, "rss_imports_gb": rss_imports,
                  "parameters": info.num_parameters, "quantization": info.quantization,
                  "mlx_peak_gb": mx.get_peak_memory() / 1e9,
                  "rss_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}))
"""


def write_files(workdir: Path) -> dict[str, Path]:
    sys.path.insert(0, str(REPO))
    from gguf import GGMLQuantizationType as Q

    from tests.gguf_files import write_gguf
    from tests.tiny_archs import make_hf_folder

    folder = workdir / "hf"
    if not (folder / "model.safetensors").exists():
        make_hf_folder(folder, "llama", **SHAPE)
    paths = {}
    for label, (matrices, embed) in FILES.items():
        path = workdir / f"bench-{label}.gguf"
        if not path.exists():
            write_gguf(folder, path, Q[matrices], embed_qtype=Q[embed] if embed else None)
        paths[label] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/bench-gguf")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = write_files(workdir)
    print(f"{'file':<14} {'size MB':>8} {'as':<10} {'header s':>9} {'load s':>7} {'MLX peak GB':>12} "
          f"{'RSS peak GB':>12} {'(after imports)':>16}")
    for label, path in paths.items():
        for mode in ("quantized", "float"):
            if label == "F16" and mode == "float":
                continue
            out = subprocess.run([sys.executable, "-c", MEASURE, str(path), mode], capture_output=True,
                                 text=True, check=True, cwd=REPO).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{label:<14} {path.stat().st_size / 1e6:>8.0f} {mode:<10} {r['header_s']:>9.2f} "
                  f"{r['load_s']:>7.2f} {r['mlx_peak_gb']:>12.2f} {r['rss_peak_gb']:>12.2f} "
                  f"{r['rss_imports_gb']:>16.2f}")
    print(f"(model: {r['parameters'] / 1e6:.0f} M parameters)")


if __name__ == "__main__":
    main()
