"""Where a product step's wall time goes: from a run's metrics.jsonl, the median step_time (collate + the
compiled step, synchronised) against the median time between consecutive train records (everything else
in the loop: callbacks, metrics, the memory guard). usage: step_gaps.py RUN_DIR [RUN_DIR ...]"""
import json, statistics, sys
from pathlib import Path
for run in sys.argv[1:]:
    rows = [json.loads(l) for l in (Path(run) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    train = [r for r in rows if r.get("type") == "train"][5:]
    gaps = [b["time"] - a["time"] for a, b in zip(train, train[1:])]
    print(json.dumps({"run": Path(run).name, "steps": len(train), "step_time_ms": round(1000 * statistics.median(r["step_time"] for r in train), 1),
                      "wall_per_step_ms": round(1000 * statistics.median(gaps), 1),
                      "peak_gb": [round(r["peak_memory_gb"], 2) for r in train[::4]]}))
