"""The serving path's host cost on this machine: req/s and the server's CPU ms per request, by thread.

Starts `benchmarks/server_load.py`'s fake server (tests/server_support.FakeDetector behind the real
HTTP app: HTTP, JSON, base64, decode, batching, post-processing and the response around a stand-in
network), runs concurrency levels of 720p base64 JPEG requests, and reads every server thread's CPU
time from /proc (Linux), the client's own CPU and the rest of the machine's, plus the server's stage
means. To compare two versions, run it alternately from two checkouts (LABEL names each line).

    LEVELS=8,64 SECS=6 SIDE=720 LABEL=new python benchmarks/server_host.py
"""
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_load as sl  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")

def threads(pid):
    out = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                s = f.read()
        except FileNotFoundError:
            continue
        name = s[s.index("(") + 1: s.rindex(")")]
        rest = s[s.rindex(")") + 2:].split()
        name = "main(loop)" if tid == str(pid) else name.rstrip("0123456789_")
        out[name] += (int(rest[11]) + int(rest[12])) * 1000 / TICK
    return out

def busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) * 1000 / TICK  # ms, all CPUs, not idle/iowait


def main():
    side = int(os.environ.get("SIDE", "720"))
    levels = [int(c) for c in os.environ.get("LEVELS", "8,64").split(",")]
    secs = float(os.environ.get("SECS", "6"))
    images = sl.encoded_samples(side)
    print("image b64 KB", [len(i) // 1024 for i in images])
    with sl.Server("fake", "cpu", 16, 5.0, []) as server:
        pid = server.process.pid
        sl.run_level(server.url, images, 8, 50, 30)
        for c in levels:
            before, sys0, me0 = threads(pid), busy(), os.times()
            r = sl.run_level(server.url, images, c, 100000, secs)
            after, sys1, me1 = threads(pid), busy(), os.times()
            mine = (me1.user + me1.system - me0.user - me0.system) * 1000
            d = {k: after[k] - before.get(k, 0) for k in after}
            n = max(1, r["ok"])
            total = sum(d.values())
            print(json.dumps({"label": os.environ.get("LABEL", ""), "c": c, "req_s": r["req_per_s"], "ok": r["ok"], "err": r["errors"],
                              "p50": r["p50_ms"], "cpu_ms_per_req": round(total / n, 2), "client_ms_per_req": round(mine / n, 2),
                              "other_cpu_pct": round(100 * ((sys1 - sys0) - total - mine) / 1000 / r["seconds"], 0),
                              "by_thread": {k: round(v / n, 2) for k, v in sorted(d.items(), key=lambda x: -x[1]) if v}}))
            text = sl.metrics_text(server.url)
            sums = sl.metric_by_label(text, "rfpipe_stage_duration_seconds_sum", "stage")
            counts = sl.metric_by_label(text, "rfpipe_stage_duration_seconds_count", "stage")
            print("  stages ms", {k: round(1000 * v / max(1.0, counts.get(k, 1.0)), 2) for k, v in sums.items()},
                  "mean batch", round((sl.metric(text, "rfpipe_batch_size_sum") or 0) / max(1, sl.metric(text, "rfpipe_batch_size_count") or 1), 2))


if __name__ == "__main__":
    main()
