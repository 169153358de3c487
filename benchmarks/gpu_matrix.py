"""GPU exactness matrix at real sizes: rfpipe `cuda` against `reference`, bit for bit (needs a GPU).

Real photos and synthetic 640x480, 1920x1080 and 3840x2160 frames; every resize mode and option
(static crop, grayscale, each contrast type, padding values, BGR/RGB network and input, both
resize filters, OpenCV's 2x area case, Pillow 13's pass order forced, dynamic sizes); every input
form (numpy, strided and negative-stride views, pinned arrays, CPU and CUDA uint8 tensors in HWC
and CHW, expanded single-channel tensors, float tensors, mixed-size lists, NHWC batches); four
threads at once, each on its own stream, each checking its own outputs; outputs of earlier calls
checked again after later ones (no aliasing). Prints one line per failure and a summary.

    python benchmarks/gpu_matrix.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import make_raw_config

import rfpipe
from rfpipe.samples import load_samples

DEVICE = torch.device("cuda")


def synthetic_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([(xx * 255 // width), (yy * 255 // height), ((xx + yy) * 255 // (width + height))], -1)
    return np.clip(img + rng.integers(-30, 30, img.shape), 0, 255).astype(np.uint8)


def configs() -> dict[str, dict]:
    imagenet = [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]
    return {
        "stretch-560": dict(size=(560, 560)),
        "stretch-640x384-bgr-network": dict(size=(640, 384), color_mode="bgr"),
        "stretch-upscale-1280": dict(size=(1280, 1280)),
        "stretch-cv2-linear": dict(size=(640, 360), resize_filter="cv2-linear"),
        "stretch-no-normalization": dict(size=(560, 560), normalization=None),
        "stretch-scaling-1": dict(size=(560, 560), normalization=None, scaling_factor=1),
        "letterbox-560-via-640x480": dict(mode="letterbox", size=(560, 560), dataset=(640, 480)),
        "letterbox-pad114-bgr": dict(mode="letterbox", size=(432, 432), dataset=(800, 600), padding_value=114, color_mode="bgr"),
        "letterbox-area-2x": dict(mode="letterbox", size=(560, 560), dataset=(960, 540)),
        "letterbox-reflect-edges-pad255": dict(mode="letterbox-reflect-edges", size=(512, 384), dataset=(700, 700), padding_value=255),
        "letterbox-cv2-linear": dict(mode="letterbox", size=(576, 576), dataset=(640, 640), resize_filter="cv2-linear", padding_value=7),
        "center-crop-640": dict(mode="center-crop", size=(560, 560), dataset=(640, 640)),
        "center-crop-larger": dict(mode="center-crop", size=(576, 576), dataset=(4000, 3000)),
        "center-crop-mixed": dict(mode="center-crop", size=(448, 448), dataset=(3000, 400)),
        "center-crop-cv2-linear": dict(mode="center-crop", size=(512, 512), dataset=(1024, 1024), resize_filter="cv2-linear"),
        "static-crop-stretch": dict(size=(560, 560), static_crop=(10, 5, 90, 78)),
        "static-crop-letterbox": dict(mode="letterbox", size=(560, 560), dataset=(640, 480), static_crop=(25, 0, 75, 100)),
        "static-crop-center-crop": dict(mode="center-crop", size=(448, 448), dataset=(700, 300), static_crop=(3, 7, 97, 93)),
        "grayscale-stretch": dict(size=(560, 560), grayscale=True),
        "grayscale-letterbox-bgr": dict(mode="letterbox", size=(560, 560), dataset=(640, 480), grayscale=True, color_mode="bgr"),
        "grayscale-center-crop-cv2": dict(mode="center-crop", size=(560, 560), dataset=(640, 640), grayscale=True, resize_filter="cv2-linear"),
        "custom-normalization": dict(size=(560, 560), scaling_factor=1, normalization=[[0.5, 0.4, 0.3], [0.2, 0.25, 0.3]]),
        "dynamic-divisible": dict(size=(560, 560), dynamic={"type": "pad-to-be-divisible", "value": 32}, normalization=imagenet),
    }


CONTRAST = {
    f"contrast-{kind.split()[0].lower()}-{mode}": dict(
        mode=mode, size=(384, 384), contrast=kind, **({"dataset": (640, 480)} if mode != "stretch" else {}))
    for kind in ("Adaptive Equalization", "Contrast Stretching", "Histogram Equalization")
    for mode in ("stretch", "letterbox", "center-crop")
}


class Checker:
    def __init__(self):
        self.cases = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def check(self, name: str, images, config, color="bgr", image_size=None, expected=None, **kwargs) -> torch.Tensor | None:
        try:
            if expected is None:
                expected = rfpipe.preprocess(images, config, device="cpu", input_color_format=color,
                                             image_size=image_size, implementation="reference")
            batch, meta = rfpipe.preprocess(images, config, device=DEVICE, input_color_format=color,
                                            image_size=image_size, implementation="cuda", **kwargs)
            if not kwargs.get("synchronize", True):
                torch.cuda.current_stream().synchronize()
            ok = (batch.dtype == torch.float32 and batch.is_contiguous() and batch.device.type == "cuda"
                  and torch.equal(batch.cpu(), expected[0].cpu()) and meta == expected[1])
            problem = None if ok else f"differs in {int((batch.cpu() != expected[0].cpu()).sum())} values"
        except Exception as error:  # report and go on: one broken case must not hide the others
            ok, batch = False, None
            problem = "".join(traceback.format_exception_only(type(error), error)).strip()
            traceback.print_exc()
        with self.lock:
            self.cases += 1
            if not ok:
                self.failures.append(f"{name}: {problem}")
                print("FAIL", name, problem, flush=True)
        return batch


def frames(quick: bool) -> dict[str, np.ndarray]:
    out = {f"photo-{k}": v for k, v in load_samples().items()}
    sizes = [(480, 640), (1080, 1920)] + ([] if quick else [(2160, 3840)])
    for i, (h, w) in enumerate(sizes):
        out[f"synthetic-{w}x{h}"] = synthetic_frame(h, w, seed=i)
    return out


def matrix(checker: Checker, quick: bool) -> None:
    imgs = frames(quick)
    for cname, kwargs in configs().items():
        config = rfpipe.ModelConfig.from_dict(make_raw_config(**kwargs))
        image_size = (600, 500) if "dynamic" in cname else None
        for fname, img in imgs.items():
            checker.check(f"{cname}/{fname}", img, config, image_size=image_size)
        checker.check(f"{cname}/list-all", list(imgs.values()), config, image_size=image_size)
        checker.check(f"{cname}/rgb-input", np.ascontiguousarray(imgs["photo-rocket"][:, :, ::-1]), config, color="rgb")
    small = {k: v for k, v in imgs.items() if k.startswith("photo") or "640x480" in k}
    for cname, kwargs in CONTRAST.items():
        config = rfpipe.ModelConfig.from_dict(make_raw_config(**kwargs))
        checker.check(f"{cname}/list", list(small.values()), config)
        if "center-crop" in cname:
            checker.check(f"{cname}/cuda-tensor", torch.from_numpy(small["photo-rocket"]).to(DEVICE), config)
    overrides = rfpipe.Overrides(disable_static_crop=True, disable_contrast=True, disable_grayscale=True)
    config = rfpipe.ModelConfig.from_dict(make_raw_config(size=(560, 560), static_crop=(10, 10, 90, 90),
                                                          grayscale=True, contrast="Histogram Equalization"))
    expected = rfpipe.preprocess(imgs["photo-rocket"], config, overrides=overrides, implementation="reference")
    checker.check("overrides-all-disabled", imgs["photo-rocket"], config, expected=expected, overrides=overrides)


def input_forms(checker: Checker, quick: bool) -> None:
    hd = synthetic_frame(1080, 1920, seed=5)
    photo = load_samples()["rocket"]
    batch8 = np.stack([synthetic_frame(1080, 1920, seed=s) for s in range(8)])
    from rfpipe.preprocess import cuda

    pinned_hd = cuda.pinned_frame(1080, 1920)
    pinned_hd[:] = hd
    forms = {
        "numpy-hwc": (hd, "bgr"),
        "numpy-nhwc-8": (batch8, "bgr"),
        "numpy-list-8": (list(batch8), "bgr"),
        "numpy-negative-stride": (hd[::-1, ::-1], "bgr"),
        "numpy-channel-flip-view": (hd[:, :, ::-1], "rgb"),
        "numpy-strided": (hd[::2, 1::3], "bgr"),
        "numpy-gray-2d": (hd[:, :, 1].copy(), "bgr"),
        "numpy-pinned": (pinned_hd, "bgr"),
        "numpy-pinned-list": ([pinned_hd, hd, photo], "bgr"),
        "cpu-tensor-hwc": (torch.from_numpy(hd.copy()), "bgr"),
        "cpu-tensor-chw": (torch.from_numpy(hd.copy()).permute(2, 0, 1), "bgr"),
        "cuda-tensor-hwc": (torch.from_numpy(hd.copy()).to(DEVICE), "bgr"),
        "cuda-tensor-chw": (torch.from_numpy(hd.copy()).to(DEVICE).permute(2, 0, 1), "bgr"),
        "cuda-tensor-chw-contiguous": (torch.from_numpy(hd.copy()).to(DEVICE).permute(2, 0, 1).contiguous(), "bgr"),
        "cuda-tensor-nhwc-8": (torch.from_numpy(batch8).to(DEVICE), "bgr"),
        "cuda-tensor-nchw-8": (torch.from_numpy(batch8).to(DEVICE).permute(0, 3, 1, 2), "bgr"),
        "cuda-tensor-expanded-gray": (torch.from_numpy(hd[:, :, :1].copy()).to(DEVICE).expand(-1, -1, 3), "bgr"),
        "cuda-tensor-view-offset": (torch.from_numpy(hd.copy()).to(DEVICE)[7:900, 13:1700], "bgr"),
        "mixed-cuda-numpy-list": ([torch.from_numpy(photo).to(DEVICE), hd, torch.from_numpy(hd)], "bgr"),
        "float-tensor-cuda": (torch.from_numpy(hd.astype(np.float32) / 255).permute(2, 0, 1).to(DEVICE), "bgr"),
        "float-tensor-cpu": (torch.from_numpy(photo.astype(np.float32) / 255).permute(2, 0, 1), "bgr"),
        "mixed-float-uint8-list": ([torch.from_numpy(photo.astype(np.float32) / 255).permute(2, 0, 1), photo], "bgr"),
        "float-numpy": (photo.astype(np.float32) / 255, "bgr"),
    }
    for cname in ("stretch-560", "letterbox-560-via-640x480", "center-crop-640", "grayscale-letterbox-bgr",
                  "stretch-cv2-linear", "static-crop-center-crop"):
        config = rfpipe.ModelConfig.from_dict(make_raw_config(**configs()[cname]))
        for fname, (images, color) in forms.items():
            checker.check(f"{cname}/{fname}", images, config, color=color)
            checker.check(f"{cname}/{fname}/no-sync", images, config, color=color, synchronize=False)


def pillow13_order(checker: Checker) -> None:
    """Force Pillow 13's pass order in a fresh runtime and compare with the numpy table applier."""
    from table_apply import pillow_resize

    from rfpipe.geometry import plan_image
    from rfpipe.preprocess.cuda.runtime import Runtime
    from rfpipe.preprocess.inputs import to_frames
    from rfpipe.preprocess.kernels.float_tables import normalization_table

    runtime = Runtime(DEVICE)
    runtime.pillow = (13, 0)
    for (w, h), (tw, th) in [((1920, 1080), (560, 300)), ((640, 480), (600, 200)), ((3000, 2000), (1000, 400))]:
        img = synthetic_frame(h, w, seed=w)
        config = rfpipe.ModelConfig.from_dict(make_raw_config(size=(tw, th)))
        frames = to_frames(img)
        plan = plan_image(config, frames[0].size, config.training_size, None, "bgr")
        got = runtime.run(frames, [plan], config, "bgr")
        torch.cuda.synchronize()
        resized = pillow_resize(np.ascontiguousarray(img[:, :, ::-1]), (tw, th), major=13)
        twelve = pillow_resize(np.ascontiguousarray(img[:, :, ::-1]), (tw, th), major=12)
        table = normalization_table(config)
        want = torch.stack([table[c][torch.from_numpy(resized[:, :, c].astype(np.int64))] for c in range(3)])
        with checker.lock:
            checker.cases += 1
            if not torch.equal(got[0].cpu(), want):
                checker.failures.append(f"pillow13-order {w}x{h}->{tw}x{th}")
            print(f"pillow13 order {w}x{h}->{tw}x{th}: orders differ in {int((resized != twelve).sum())} bytes; "
                  f"ok={torch.equal(got[0].cpu(), want)}", flush=True)


def threads(checker: Checker, quick: bool) -> None:
    """Four threads, each on its own stream with its own configs and frames, checking every output."""
    imgs = list(frames(True).values())
    names = ["stretch-560", "letterbox-560-via-640x480", "center-crop-640", "grayscale-center-crop-cv2"]
    work = []
    for t, name in enumerate(names):
        config = rfpipe.ModelConfig.from_dict(make_raw_config(**configs()[name]))
        batches = [imgs[t:t + 1 + t % 3], imgs[(t + 2) % len(imgs)], list(reversed(imgs))]
        expected = [rfpipe.preprocess(b, config, implementation="reference") for b in batches]
        work.append((config, batches, expected))
    rounds = 5 if quick else 15

    def worker(t: int) -> None:
        config, batches, expected = work[t]
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            kept = []
            for r in range(rounds):
                i = r % len(batches)
                batch, _ = rfpipe.preprocess(batches[i], config, device=DEVICE, implementation="cuda",
                                             synchronize=False)
                kept.append((i, batch))
            stream.synchronize()
            for i, batch in kept:  # every output still holds its own values: no aliasing
                with checker.lock:
                    checker.cases += 1
                    if not torch.equal(batch.cpu(), expected[i][0]):
                        checker.failures.append(f"thread {t} batch {i}")
                        print("FAIL thread", t, i, flush=True)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 4K frames")
    args = parser.parse_args()
    import cv2
    import PIL
    import triton

    from rfpipe.preprocess import cuda

    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__,
          "Pillow", PIL.__version__, "cv2", cv2.__version__, "numpy", np.__version__, flush=True)
    start = time.perf_counter()
    ok = cuda.available(DEVICE)
    print(f"available: {ok} (self-check and compile {time.perf_counter() - start:.1f} s)", flush=True)
    if not ok:
        return 1
    checker = Checker()
    for section in (matrix, input_forms, threads):
        start = time.perf_counter()
        section(checker, args.quick)
        print(f"{section.__name__}: {checker.cases} cases so far, {len(checker.failures)} failures, "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    pillow13_order(checker)
    print(f"SUMMARY: {checker.cases} cases, {len(checker.failures)} failures")
    for failure in checker.failures[:50]:
        print("  ", failure)
    return 0 if not checker.failures else 1


if __name__ == "__main__":
    sys.exit(main())
