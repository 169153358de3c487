"""Plain numpy appliers of the coefficient tables: the oracle that ties tables to Pillow/OpenCV."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from rfpipe.preprocess.kernels import opencv_tables, pillow_tables


def pillow_pass(img: np.ndarray, table: pillow_tables.AxisTable, axis: int) -> np.ndarray:
    """One Pillow pass along `axis` (0 = rows/vertical, 1 = columns/horizontal) of an HWC uint8 image."""
    src = np.moveaxis(img.astype(np.int64), axis, 0)
    acc = np.full((table.out_size,) + src.shape[1:], pillow_tables.ROUNDING_BIAS, dtype=np.int64)
    for k in range(table.ksize):
        idx = np.minimum(table.first + k, table.in_size - 1)
        w = table.weights[:, k].astype(np.int64).reshape((-1,) + (1,) * (src.ndim - 1))
        acc += src[idx] * w
    out = np.clip(acc >> pillow_tables.PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def pillow_resize(img: np.ndarray, size: tuple[int, int], major: int | None = None) -> np.ndarray:
    plan = pillow_tables.resize_plan((img.shape[1], img.shape[0]), size, major)
    passes = [(plan.horizontal, 1), (plan.vertical, 0)]
    if plan.vertical_first:
        passes.reverse()
    for table, axis in passes:
        if table is not None:
            img = pillow_pass(img, table, axis)
    return img


def opencv_linear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = img.shape[:2]
    if (w, h) == tuple(size):
        return img.copy()
    src = img.astype(np.int64)
    if opencv_tables.is_area_2x((w, h), size):
        s = src[0::2, 0::2] + src[0::2, 1::2] + src[1::2, 0::2] + src[1::2, 1::2]
        return ((s + 2) >> 2).astype(np.uint8)
    hx = opencv_tables.linear_axis(w, size[0], horizontal=True)
    vy = opencv_tables.linear_axis(h, size[1], horizontal=False)
    x0 = hx.index
    x1 = np.minimum(x0 + 1, w - 1)
    shape = (1, -1) + (1,) * (src.ndim - 2)
    rows = src[:, x0] * hx.weights[:, 0].reshape(shape) + src[:, x1] * hx.weights[:, 1].reshape(shape)
    y0 = np.clip(vy.index, 0, h - 1)
    y1 = np.clip(vy.index + 1, 0, h - 1)
    vshape = (-1,) + (1,) * (src.ndim - 1)
    b0 = vy.weights[:, 0].astype(np.int64).reshape(vshape)
    b1 = vy.weights[:, 1].astype(np.int64).reshape(vshape)
    out = (((b0 * (rows[y0] >> 4)) >> 16) + ((b1 * (rows[y1] >> 4)) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def uniform_and_near_pairs(rng: np.random.Generator, count: int) -> np.ndarray:
    """(in, out) size pairs: `count // 2` uniform in 1..600, `count // 4` differing by at most 3."""
    uniform = rng.integers(1, 601, (count // 2, 2))
    base = rng.integers(1, 601, count // 4)
    near = np.stack([base, np.clip(base + rng.integers(-3, 4, base.size), 1, None)], 1)
    return np.concatenate([uniform, near])


def run_beside(env_var: str, library: str, script: str) -> dict:
    """Run `script` (a test file's `__main__` comparison) with another version of a library first on
    the path, from the `pip install --target` directory `env_var` names; skip when it names none."""
    import pytest

    path = os.environ.get(env_var)
    if not path:
        pytest.skip(f"set {env_var} to a directory with {library} (pip install --target DIR ...)")
    path = str(Path(path).resolve())  # the subprocess may resolve a relative path elsewhere
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([path, str(root)]))
    completed = subprocess.run(
        [sys.executable, str(Path(script).resolve())], env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])
