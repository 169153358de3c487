"""Load benchmark for `rfpipe serve`: throughput, p50/p99 latency, errors and peak memory per concurrency.

Starts the server itself (on 127.0.0.1, a free port) from a model package, or targets a running
one on loopback with --url: rfpipe, or the Roboflow inference server (`inference`, same route and
body) with --model-id set to the id it serves and --pid its process for the memory figures. Every level is bounded in requests and in seconds. Optional parts:
--compare-max-batch 1 starts a second server with that batch limit and prints the throughput ratio
at the highest concurrency (the batching gain, baseline measured in the same run); --check sends
64 different images concurrently and compares each answer with the same image's answer sent
alone; --soak N sends N requests and samples the server's resident memory to show growth.

    python benchmarks/server_load.py --model PKG [--device cuda] [--concurrency 1,8,64]
        [--requests 200] [--max-batch 16] [--compare-max-batch 1] [--check] [--soak 10000] [--json out.json]
    python benchmarks/server_load.py --url http://127.0.0.1:9001 --model-id /abs/path/to/package --pid PID
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import cv2

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from rfpipe.samples import load_samples

MODEL_ID = "bench/1"
FAKE = "fake"
# tests/server_support.FakeDetector (reference preprocessing, a pooled-pixel linear "network") behind the
# real app, for soaking the serving path where the real network is too slow (2-core CPU).
FAKE_SERVER = """
import sys, uvicorn
sys.path.insert(0, "tests")
from conftest import make_config
from server_support import FakeDetector
from rfpipe.server import ServerSettings, create_app
from rfpipe.server.cli import build_parser
a = build_parser().parse_args(sys.argv[1:])
detector = FakeDetector(make_config(size=(64, 64), mode="letterbox", dataset=(96, 72)))
settings = ServerSettings(model_id=a.model_id, max_batch=a.max_batch, max_wait_ms=a.max_wait_ms, queue_size=a.queue_size,
                          batch_policy=a.batch_policy)
uvicorn.run(create_app([detector], settings), host="127.0.0.1", port=a.port, log_level="warning")
"""


def encoded_samples(limit_side: int) -> list[str]:
    """The bundled photos as base64 JPEG (quality 95), larger sides cut to `limit_side`."""
    out = []
    for image in load_samples().values():
        image = image[:limit_side, :limit_side]
        out.append(base64.b64encode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()).decode())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`rfpipe serve` in a subprocess on 127.0.0.1; stopped on exit."""

    def __init__(self, model: str, device: str, max_batch: int, max_wait_ms: float, extra: list[str]):
        self.port = free_port()
        argv = [model, "--model-id", MODEL_ID, "--host", "127.0.0.1", "--port", str(self.port), "--device", device,
                "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--queue-size", "1024",
                "--log-level", "warning", *extra]
        code = "import sys; from rfpipe.server.cli import main; sys.exit(main(sys.argv[1:]))"
        if model == FAKE:  # the serving path (HTTP, decode, batching, JSON) around a stand-in network
            code = FAKE_SERVER
        root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self.started = time.monotonic()
        self.start_s: float | None = None  # from the process's start to /readyz answering 200
        self.process = subprocess.Popen([sys.executable, "-c", code, *argv], env=env, cwd=root)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                if request(self.url, "GET", "/readyz")[0] == 200:
                    self.start_s = time.monotonic() - self.started
                    print(json.dumps({"server_ready_s": round(self.start_s, 1)}), flush=True)
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the server did not become ready in 600 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def memory_mb(self) -> tuple[float, float]:
        return memory_mb(self.process.pid)


def memory_mb(root: int) -> tuple[float, float]:
    """Current and peak resident memory of a server's process tree (with --processes: every child), MiB.

    Sums over the processes: pages they share (libraries) count once per process, and the peak is
    the sum of each process's own peak (VmHWM), which may not all have come at the same moment.
    """
    rss = peak = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f)
        except FileNotFoundError:  # ended while we looked
            continue
        if "VmRSS" in fields:  # a zombie has none
            rss += int(fields["VmRSS"].split()[0])
            peak += int(fields["VmHWM"].split()[0])
    return rss / 1024, peak / 1024


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/PID/task/TID/children."""
    pids = [pid]
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return pids
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children = [int(c) for c in f.read().split()]
        except FileNotFoundError:
            continue
        for child in children:
            pids += process_tree(child)
    return pids


def request(url: str, method: str, path: str, body: bytes | None = None, conn=None) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(url)
    own = conn is None
    conn = conn or http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        if own:
            conn.close()


def infer_body(image_b64: str, confidence: float = 0.4) -> bytes:
    """The JSON body of one request (the same for rfpipe and the inference server)."""
    return json.dumps({"model_id": MODEL_ID, "image": {"type": "base64", "value": image_b64},
                       "confidence": confidence}).encode()


def _level_part(url: str, bodies: list[bytes], concurrency: int, requests: int, stop_at: float,
                offset: int = 0) -> tuple[list[float], dict[int, int]]:
    """Latencies of the requests that got 200 and the count of each other status, from `concurrency`
    keep-alive clients sending `requests` bodies until the wall-clock time `stop_at`."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    counter = iter(range(offset, offset + requests))
    lock = threading.Lock()

    def client() -> None:
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
        while time.time() < stop_at:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            started = time.perf_counter()
            try:
                status, _ = request(url, "POST", "/infer/object_detection", bodies[index % len(bodies)], conn)
            except OSError:
                status = -1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
            elapsed = time.perf_counter() - started
            with lock:
                if status == 200:
                    latencies.append(elapsed)
                else:
                    errors[status] = errors.get(status, 0) + 1
        conn.close()

    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    return latencies, errors


def run_level(url: str, images: list[str], concurrency: int, requests: int, cap_s: float,
              processes: int = 1) -> dict:
    """`requests` inferences from `concurrency` keep-alive clients (stops early after `cap_s`), the
    clients spread over `processes` client processes (one Python client is GIL-bound near a few
    thousand requests a second, so a fast server needs several)."""
    bodies = [infer_body(i) for i in images]
    processes = max(1, min(processes, concurrency))
    started = time.perf_counter()
    stop_at = time.time() + cap_s
    if processes == 1:
        latencies, errors = _level_part(url, bodies, concurrency, requests, stop_at)
    else:
        import multiprocessing

        shares = [(concurrency // processes + (i < concurrency % processes),
                   requests // processes + (i < requests % processes)) for i in range(processes)]
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            parts = pool.starmap(_level_part, [(url, bodies, c, r, stop_at, i * requests)
                                               for i, (c, r) in enumerate(shares)])
        latencies = [t for part, _ in parts for t in part]
        errors = {}
        for _, part_errors in parts:
            for status, count in part_errors.items():
                errors[status] = errors.get(status, 0) + count
    seconds = time.perf_counter() - started
    latencies.sort()
    done = len(latencies)
    return {
        "concurrency": concurrency, "client_processes": processes, "ok": done, "errors": sum(errors.values()),
        "error_statuses": errors, "seconds": round(seconds, 3), "req_per_s": round(done / seconds, 2),
        "p50_ms": round(1000 * latencies[done // 2], 1) if done else None,
        "p99_ms": round(1000 * latencies[min(done - 1, int(done * 0.99))], 1) if done else None,
    }


def metrics_text(url: str) -> str:
    return request(url, "GET", "/metrics")[1].decode()


def metric(text: str, name: str) -> float | None:
    """The largest value of one metric over its labels, in a /metrics text."""
    values = [float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    return max(values) if values else None


def without_ids(predictions: list[dict]) -> list[dict]:
    """Inference-server predictions without their random `detection_id`s, so answers compare by content."""
    return [{k: v for k, v in p.items() if k != "detection_id"} for p in predictions]


def answer_drift(a: list[dict], b: list[dict], box_px: float = 2.0) -> dict:
    """How far answer `b` is from answer `a`: detections matched (same class, every box edge within
    `box_px`, greedily in `a`'s order), unmatched on either side, largest confidence and box deltas."""
    taken = [False] * len(b)
    conf_delta = box_delta = 0.0
    matched = 0
    for p in a:
        best, best_key = None, (box_px, float("inf"))
        for j, q in enumerate(b):
            if taken[j] or q["class"] != p["class"]:
                continue
            key = (max(abs(p[k] - q[k]) for k in ("x", "y", "width", "height")), abs(p["confidence"] - q["confidence"]))
            if key <= best_key:
                best, best_key = j, key
        if best is not None:
            taken[best] = True
            matched += 1
            box_delta, conf_delta = max(box_delta, best_key[0]), max(conf_delta, best_key[1])
    return {"matched": matched, "unmatched": len(a) + len(b) - 2 * matched,
            "max_conf_delta": conf_delta, "max_box_delta_px": box_delta}


def metric_by_label(text: str, name: str, label: str) -> dict[str, float]:
    """Values of one metric summed per value of one of its labels, in a /metrics text."""
    out: dict[str, float] = {}
    for labels, value in re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.M):
        key = dict(re.findall(r'(\w+)="([^"]*)"', labels)).get(label, "")
        out[key] = out.get(key, 0.0) + float(value)
    return out


def check_frames(count: int = 64) -> list:
    """`count` different crops of the sample photos (BGR), all of different sizes."""
    photos = list(load_samples().values())
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y, x = 7 * i % 200, 11 * i % 200
        crops.append(photo[y: y + 200 + 3 * i, x: x + 320 - 2 * i])
    return crops


def check_under_load(url: str, clients: int = 64, confidence: float = 0.05) -> dict:
    """Each of `clients` different images, sent together, gets the answer it gets alone.

    Bit-identical answers need the same batch composition on the GPU (its matrix kernels change with
    the batch size), so next to `identical` this reports the drift of each concurrent answer from its
    own answer alone, and `own_answer_nearest`: for how many concurrent answers their own image's answer
    alone is nearer (top 10 detections) than any other image's; anything below `clients` is cross-talk.
    """
    images = [base64.b64encode(cv2.imencode(".png", crop)[1].tobytes()).decode() for crop in check_frames(clients)]

    def answer(image: str) -> list[dict] | str:
        status, data = request(url, "POST", "/infer/object_detection", infer_body(image, confidence))
        if status != 200:
            return f"HTTP {status}"
        return without_ids(json.loads(data)["predictions"])

    alone = [answer(i) for i in images]
    barrier = threading.Barrier(clients)

    def together(image: str) -> list[dict] | str:
        barrier.wait()
        return answer(image)

    with ThreadPoolExecutor(clients) as pool:
        concurrent = list(pool.map(together, images))
    errors = sum(isinstance(a, str) for a in alone + concurrent)
    if errors:
        return {"clients": clients, "errors": errors}
    drifts = [answer_drift(a, c) for a, c in zip(alone, concurrent, strict=True)]

    def distance(a: list[dict], b: list[dict]) -> float:
        d = answer_drift(a[:10], b[:10], box_px=1e9)
        return d["unmatched"] * 1e6 + d["max_box_delta_px"] + d["max_conf_delta"]

    nearest = sum(min(range(clients), key=lambda j: distance(alone[j], c)) == i for i, c in enumerate(concurrent))
    return {"clients": clients, "confidence": confidence, "distinct_answers": len({json.dumps(a) for a in alone}),
            "detections_alone": sum(len(a) for a in alone), "errors": 0,
            "identical": sum(a == c for a, c in zip(alone, concurrent, strict=True)),
            "same_detections_within_2px": sum(d["unmatched"] == 0 for d in drifts),
            "unmatched_detections": sum(d["unmatched"] for d in drifts),
            "max_conf_delta": max(d["max_conf_delta"] for d in drifts),
            "max_box_delta_px": max(d["max_box_delta_px"] for d in drifts),
            "own_answer_nearest": nearest}


def soak(server: Server, images: list[str], total: int, concurrency: int = 8, every: int = 1000) -> dict:
    """`total` requests in rounds of `every`; resident memory after each round."""
    samples = []
    errors = 0
    for _ in range(total // every):
        result = run_level(server.url, images, concurrency, every, cap_s=3600)
        errors += result["errors"]
        samples.append(round(server.memory_mb()[0], 1))
        print(json.dumps({"soak_round": len(samples), "errors": errors, "req_per_s": result["req_per_s"],
                          "rss_mb": samples[-1]}), flush=True)
    warm = samples[0]
    return {"requests": total, "errors": errors, "rss_mb_after_each_1000": samples,
            "growth_after_first_round_mb": round(samples[-1] - warm, 1)}


def main() -> None:
    global MODEL_ID
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model package to serve (the benchmark starts the server); "
                                    "'fake' serves a stand-in network (serving-path soak)")
    p.add_argument("--url", help="a running server on loopback instead (rfpipe, or the Roboflow inference server)")
    p.add_argument("--model-id", default=MODEL_ID,
                   help="the model id requests name (default bench/1, what the benchmark's own servers serve; "
                        "for the inference server serving a local package: the package's absolute path)")
    p.add_argument("--pid", type=int, help="with --url: the server's process id, for its memory figures")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--server-arg", action="append", default=[], help="extra `rfpipe serve` argument (repeatable)")
    p.add_argument("--concurrency", default="1,8,64")
    p.add_argument("--client-processes", type=int, default=1,
                   help="spread each level's clients over this many processes (for servers faster than one client)")
    p.add_argument("--requests", type=int, default=200, help="requests per level")
    p.add_argument("--cap-s", type=float, default=120.0, help="seconds per level at most")
    p.add_argument("--image-side", type=int, default=1080, help="crop the sample photos to this side at most")
    p.add_argument("--compare-max-batch", type=int, help="second server with this --max-batch, at the top concurrency")
    p.add_argument("--check", action="store_true", help="64 concurrent clients, answers equal to alone")
    p.add_argument("--soak", type=int, default=0, help="requests for the memory soak (multiple of 1000)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    MODEL_ID = args.model_id  # every request body and every server this run starts
    if not args.model and not args.url:
        p.error("give --model (start a server) or --url (a running server)")
    if args.url and urllib.parse.urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        p.error("--url must be a loopback address")
    levels = [int(c) for c in args.concurrency.split(",")]
    images = encoded_samples(args.image_side)
    report: dict = {"machine": f"{platform.node()} {platform.processor() or platform.machine()} ({os.cpu_count()} cpus)",
                    "date": time.strftime("%Y-%m-%d"), "device": args.device, "max_batch": args.max_batch,
                    "max_wait_ms": args.max_wait_ms, "levels": []}

    def measure(url: str, server: Server | None, label: str, concurrencies: list[int]) -> list[dict]:
        run_level(url, images, min(8, max(concurrencies)), 2 * len(images), args.cap_s)  # warm-up
        rows = []
        for c in concurrencies:
            row = {"server": label, **run_level(url, images, c, args.requests, args.cap_s, args.client_processes)}
            pid = server.process.pid if server is not None else args.pid
            if pid is not None:
                row["server_rss_mb"], row["server_peak_rss_mb"] = (round(v, 1) for v in memory_mb(pid))
            text = metrics_text(url)
            gpu = metric(text, "rfpipe_gpu_memory_peak_bytes")
            if gpu is not None:
                row["gpu_peak_mb"] = round(gpu / (1 << 20), 1)
            mean_batch = (metric(text, "rfpipe_batch_size_sum") or 0) / max(1, metric(text, "rfpipe_batch_size_count") or 1)
            row["mean_batch_so_far"] = round(mean_batch, 2)
            row["images_by_device"] = metric_by_label(text, "rfpipe_images_total", "device")
            row["decodes"] = metric_by_label(text, "rfpipe_decodes_total", "decoder")
            sums = metric_by_label(text, "rfpipe_stage_duration_seconds_sum", "stage")
            counts = metric_by_label(text, "rfpipe_stage_duration_seconds_count", "stage")
            row["stage_mean_ms_so_far"] = {k: round(1000 * v / max(1.0, counts.get(k, 1.0)), 2) for k, v in sums.items()}
            rows.append(row)
            print(json.dumps(row), flush=True)
        return rows

    if args.url:
        report["levels"] = measure(args.url, None, f"url {args.url} model {args.model_id}", levels)
        if args.check:
            report["check"] = check_under_load(args.url)
            print(json.dumps({"check": report["check"]}), flush=True)
    else:
        extra = args.server_arg
        with Server(args.model, args.device, args.max_batch, args.max_wait_ms, extra) as server:
            report["server_ready_s"] = server.start_s
            report["levels"] = measure(server.url, server, f"max_batch={args.max_batch}", levels)
            if args.check:
                report["check"] = check_under_load(server.url)
                print(json.dumps({"check": report["check"]}), flush=True)
            if args.soak:
                report["soak"] = soak(server, images, args.soak)
                print(json.dumps({"soak": report["soak"]}), flush=True)
        if args.compare_max_batch:
            top = max(levels)
            with Server(args.model, args.device, args.compare_max_batch, args.max_wait_ms, extra) as baseline:
                base = measure(baseline.url, baseline, f"max_batch={args.compare_max_batch}", [top])[0]
                if args.check:
                    report["check_compare_server"] = check_under_load(baseline.url)
                    print(json.dumps({"check_compare_server": report["check_compare_server"]}), flush=True)
            batched = next(r for r in report["levels"] if r["concurrency"] == top)
            report["batching_gain"] = {"concurrency": top, "baseline_req_per_s": base["req_per_s"],
                                       "batched_req_per_s": batched["req_per_s"],
                                       "ratio": round(batched["req_per_s"] / base["req_per_s"], 2)}
            print(json.dumps({"batching_gain": report["batching_gain"]}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
