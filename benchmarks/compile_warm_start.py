"""How long the compiled forward takes to start: cold, warm from the inductor cache directory (loading on
its own thread, as rfpipe does when the cache is marked warm, and with inductor's pool of compile
workers, as before), and warm from `torch.compiler.save_cache_artifacts()` (the "mega-cache"), each in a
process of its own. Each row says which of inductor's caches hit or missed, and dynamo's phase times.

Each start is one `rfpipe.backends.compiled.CompiledForward` over the torch backend's forward of MODEL
(a checkpoint or a package with weights.pth), one bucket; the three processes share a fresh cache
directory. Prints one line per start (the bucket's warm-up seconds and the whole process's) and writes
JSON with --json.

    python benchmarks/compile_warm_start.py /work/trained-nano/checkpoint.pth --device cpu --mode default
    python benchmarks/compile_warm_start.py /tmp/pkg384/stretch --device cuda --dtype bfloat16 --bucket 8  # gpu
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
from pathlib import Path
import torch
import rfpipe
from rfpipe.backends.compiled import CompiledForward
start, cache, model, device, dtype, bucket, mode = sys.argv[1:8]
cache = Path(cache)
if start == "warm-pool":  # the marks gone: rfpipe takes the lock and leaves inductor its compile workers
    for mark in (cache / "inductor").glob("warm-*"):
        mark.unlink()
detector = rfpipe.Detector.load(model, device=device, backend="torch", dtype=dtype, compile="none")
loaded = 0.0
if start == "mega-load":
    t = time.perf_counter()
    torch.compiler.load_cache_artifacts((cache / "mega.bin").read_bytes())
    loaded = time.perf_counter() - t
size = detector.config.training_size
forward = CompiledForward(detector.backend._forward, detector.device, buckets=(int(bucket),),
                          input_size=(size.width, size.height), cache_dir=cache / "inductor",
                          mode=None if mode == "default" else mode, progress=False, name="model")
from torch._dynamo.utils import counters
from torch._dynamo.utils import compilation_time_metrics as phases
hits = {{f"{{group}}.{{name}}": n for group in ("inductor", "aot_autograd") for name, n in counters[group].items()
        if "cache" in name}}
result = {{"start": start, "compiled": forward.compiled, "cache_warm": forward.cache_warm,
          "warm_s": forward.warm_s[int(bucket)] if forward.compiled else None,
          "load_artifacts_s": loaded, "process_s": time.perf_counter() - t0, "caches": hits,
          "phases": {{k: round(sum(v), 2) for k, v in phases.items() if sum(v) > 0.2}}}}
if start == "cold":
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts:
        (cache / "mega.bin").write_bytes(artifacts[0])
        result["mega_bytes"] = len(artifacts[0])
print("RESULT", json.dumps(result))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--bucket", type=int, default=1)
    parser.add_argument("--mode", default="reduce-overhead", help="torch.compile mode ('default' for none)")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rfpipe-warm-start-") as cache:
        for start in ("cold", "warm", "warm-pool", "mega-load"):
            begun = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), start, cache, args.model,
                                   args.device, args.dtype, str(args.bucket), args.mode],
                                  capture_output=True, text=True, timeout=1800)
            line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            row = json.loads(line[0][7:]) if line else {"start": start, "error": done.stderr[-1500:]}
            row["wall_s"] = time.perf_counter() - begun
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "device": args.device, "dtype": args.dtype,
                                               "bucket": args.bucket, "mode": args.mode, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
