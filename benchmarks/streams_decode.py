"""Video decoding for streams: OpenCV's FFmpeg backend vs PyAV on a generated 720p video, frames/s and CPU.

Generates a 720p H.264 video (PyAV's libx264) and an MPEG-4 part 2 one (OpenCV's VideoWriter, mp4v),
FRAMES frames of moving content each, then decodes each file to BGR uint8 frames:
- `opencv`: cv2.VideoCapture(CAP_FFMPEG).read() (what rfpipe.io.video uses);
- `opencv_into_buffer`: read(image=buffer) into one preallocated array; says whether OpenCV wrote in
  place (so a pinned host buffer could receive the frames), and on CUDA machines does it with a
  pinned torch tensor's memory;
- `pyav`: PyAV, FFmpeg's frame threads (thread_type AUTO), frame.to_ndarray(format="bgr24");
- `pyav_cuda` (where PyAV lists a cuda hw device and a GPU is present): NVDEC decode (hwaccel) then
  the copy back to host BGR;
- `opencv_hw` : CAP_PROP_HW_ACCELERATION=ANY, and whether OpenCV reports it engaged.
Each decoder runs REPEATS times, interleaved with the others; the fastest run is reported.
Reports frames/s (wall), CPU % of this process (100 = one core) and CPU ms per frame, and whether
each decoder's frames equal OpenCV's. Writes JSON to $OUT/streams_decode.json (or ./out).

    python benchmarks/streams_decode.py            # FRAMES=300 by default
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

FRAMES = int(os.environ.get("FRAMES", 300))
REPEATS = int(os.environ.get("REPEATS", 3))  # each decoder runs this often, interleaved; the fastest run counts
WIDTH, HEIGHT, FPS = 1280, 720, 30


def scene(i: int) -> np.ndarray:
    """A frame with moving gradients and shapes (compresses like video, not like noise)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.stack([(x + 3 * i) % 256, (y + 2 * i) % 256, ((x + y) // 2 + i) % 256], -1).astype(np.uint8)
    cv2.circle(image, (100 + 8 * i % (WIDTH - 200), 360), 80, (255, 255, 255), -1)
    cv2.putText(image, f"frame {i}", (40, 80), cv2.FONT_HERSHEY_SIMPLEX, 2, (0, 0, 0), 4)
    return image


def write_h264(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(scene(i), format="bgr24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_mp4v(path: Path, frames: int = FRAMES) -> Path:
    """`frames` frames of `scene` as an MPEG-4 part 2 video (OpenCV's VideoWriter, mp4v) at FPS."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    for i in range(frames):
        writer.write(scene(i))
    writer.release()
    return path


def timed(decode, path: Path) -> tuple[dict, list[np.ndarray]]:
    keep: list[np.ndarray] = []
    wall, cpu = time.perf_counter(), time.process_time()
    count, extra = decode(path, keep)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    row = {"frames": count, "fps": count / wall, "cpu_percent": 100 * cpu / wall, "cpu_ms_per_frame": 1000 * cpu / count}
    row.update(extra)
    return row, keep


KEEP_EVERY = 50  # frames kept for the equality check


def opencv(path: Path, keep: list, params: list | None = None) -> tuple[int, dict]:
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params or [])
    count = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if count % KEEP_EVERY == 0:
            keep.append(frame)
        count += 1
    extra = {}
    if params:
        extra["hw_acceleration_reported"] = capture.get(cv2.CAP_PROP_HW_ACCELERATION)
    capture.release()
    return count, extra


def opencv_hw(path: Path, keep: list) -> tuple[int, dict]:
    return opencv(path, keep, [cv2.CAP_PROP_HW_ACCELERATION, cv2.VIDEO_ACCELERATION_ANY])


def opencv_into_buffer(path: Path, keep: list) -> tuple[int, dict]:
    try:
        import torch

        pinned = torch.cuda.is_available()
        tensor = torch.empty((HEIGHT, WIDTH, 3), dtype=torch.uint8, pin_memory=pinned)
        buffer = tensor.numpy()
    except ImportError:
        pinned, buffer = False, np.empty((HEIGHT, WIDTH, 3), np.uint8)
    address = buffer.ctypes.data
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    count, in_place = 0, True
    while True:
        ok, frame = capture.read(image=buffer)
        if not ok:
            break
        in_place &= frame.ctypes.data == address
        if count % KEEP_EVERY == 0:
            keep.append(frame.copy())
        count += 1
    capture.release()
    return count, {"wrote_in_place": bool(in_place), "buffer_pinned": pinned}


def pyav(path: Path, keep: list, hwaccel=None) -> tuple[int, dict]:
    import av

    count = 0
    with av.open(str(path), hwaccel=hwaccel) if hwaccel else av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            image = frame.to_ndarray(format="bgr24")
            if count % KEEP_EVERY == 0:
                keep.append(image)
            count += 1
    return count, {}


def pyav_cuda(path: Path, keep: list) -> tuple[int, dict]:
    from av.codec.hwaccel import HWAccel

    return pyav(path, keep, HWAccel(device_type="cuda", allow_software_fallback=False))


def main() -> None:
    out = Path(os.environ.get("OUT") or "out")
    out.mkdir(parents=True, exist_ok=True)
    try:
        import av
        from av.codec.hwaccel import hwdevices_available
    except ImportError:  # without PyAV: the mp4v file and OpenCV's rows only
        av = None
    gpu = False
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        pass
    folder = Path(tempfile.mkdtemp(prefix="rfpipe-decode-"))
    start = time.perf_counter()
    files = {"mp4v": write_mp4v(folder / "v_mp4v.mp4")}
    decoders = {"opencv": opencv, "opencv_into_buffer": opencv_into_buffer, "opencv_hw": opencv_hw}
    if av is not None:
        files = {"h264": write_h264(folder / "v.mp4"), **files}
        decoders["pyav"] = pyav
        if gpu and "cuda" in hwdevices_available():
            decoders["pyav_cuda"] = pyav_cuda
    print(f"wrote {FRAMES} frames of {WIDTH}x{HEIGHT} ({', '.join(files)}) in {time.perf_counter() - start:.1f} s",
          flush=True)
    report = {"meta": {"machine": platform.node(), "cpus": os.cpu_count(), "opencv": cv2.__version__,
                       "pyav": av.__version__ if av else None, "frames": FRAMES, "size": f"{WIDTH}x{HEIGHT}", "gpu": gpu,
                       "date": time.strftime("%Y-%m-%d %H:%M")}, "rows": {}}
    for codec, path in files.items():
        baseline = None
        runs: dict[str, list] = {name: [] for name in decoders}
        for _ in range(REPEATS):
            for name, decode in decoders.items():
                try:
                    runs[name].append(timed(decode, path))
                except Exception as error:  # e.g. no NVDEC for this codec
                    runs[name].append(({"error": f"{type(error).__name__}: {error}"}, []))
        for name in decoders:
            row, kept = max(runs[name], key=lambda r: r[0].get("fps", 0))
            row = dict(row, cpu_ms_per_frame_runs=[round(r[0].get("cpu_ms_per_frame", 0), 2) for r in runs[name]])
            if name == "opencv":
                baseline = kept
            elif kept and baseline:
                row["equal_to_opencv"] = len(kept) == len(baseline) and all(
                    np.array_equal(a, b) for a, b in zip(kept, baseline, strict=True))
                if not row["equal_to_opencv"] and len(kept) == len(baseline):
                    row["max_abs_diff"] = int(max(np.abs(a.astype(int) - b).max() for a, b in zip(kept, baseline, strict=True)))
            report["rows"][f"{codec}/{name}"] = row
            print(f"{codec:5s} {name:20s} " + json.dumps({k: round(v, 2) if isinstance(v, float) else v
                                                         for k, v in row.items()}), flush=True)
    (out / "streams_decode.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"-> {out / 'streams_decode.json'}")


if __name__ == "__main__":
    main()
