"""Padding fraction and distinct batch shapes per epoch: our bucketing at several PAD_MULTIPLEs /
WINDOWs vs mlx-lm's batching, on the demo data (SmolLM2 tokenizer and the tiny test tokenizer)."""
import sys, json
import pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import trainer_core
import numpy as np
from trainer_core.data import batching
from trainer_core.data import load_dataset, tokenize_sft
from trainer_core.models.loading import load_model

def ours(lengths, pm, window, epochs=3, bs=4):
    old = batching.PAD_MULTIPLE, batching.WINDOW
    batching.PAD_MULTIPLE, batching.WINDOW = pm, window
    real = pad = 0; shapes = set()
    for e in range(epochs):
        for b in batching.epoch_batches(lengths, bs, 0, e):
            L = [lengths[i] for i in b]; w = batching.padded_length(max(L))
            real += sum(L); pad += len(b) * w; shapes.add((len(b), w))
    batching.PAD_MULTIPLE, batching.WINDOW = old
    return 1 - real / pad, len(shapes)

def mlx(lengths, epochs=3, bs=4, seed=0):
    # iterate_batches with CacheDataset: "sort" by number of JSON keys = input order
    idx = list(range(len(lengths))); batches = [idx[i:i + bs] for i in range(0, len(idx) - bs + 1, bs)]
    rng = np.random.default_rng(seed); real = pad = 0; shapes = set()
    for e in range(epochs):
        for k in rng.permutation(len(batches)):
            L = [lengths[i] for i in batches[k]]; w = 1 + 32 * ((max(L) + 31) // 32)
            real += sum(L); pad += bs * (w - 1); shapes.add(w)   # model input is w-1 wide; count like ours
    return 1 - real / pad, len(shapes)

splits = load_dataset(str(pathlib.Path(__file__).resolve().parents[2] / "resources" / "demo_data"))
for spec in ("demo", sys.argv[1] if len(sys.argv) > 1 else "/tmp/bench-work/micro/model"):
    tok = load_model(spec).tokenizer
    ex, st = tokenize_sft(splits.train, tok, splits.kind, 512, True)
    lengths = [len(e.input_ids) for e in ex]
    print(f"\n{spec}: {len(lengths)} examples, mean {np.mean(lengths):.1f}, min {min(lengths)}, max {max(lengths)} tokens")
    f, n = mlx(lengths); print(f"  mlx-lm iterate_batches (1+32k):        padding {100*f:5.1f}%   shapes/3 epochs {n}")
    for window in (16, 64, 10**6):
        for pm in (1, 8, 16, 32, 64):
            f, n = ours(lengths, pm, window)
            print(f"  ours WINDOW={window if window < 10**6 else 'all':>4} PAD_MULTIPLE={pm:3d}: padding {100*f:5.1f}%   shapes/3 epochs {n}")
