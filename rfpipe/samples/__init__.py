"""Bundled sample photos (public domain / CC0, see LICENSES.md) for the demo, tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SAMPLES_DIR = Path(__file__).parent


def sample_paths() -> list[Path]:
    """The bundled photos, sorted by name."""
    return sorted(p for p in SAMPLES_DIR.iterdir() if p.suffix in (".jpg", ".png"))


def load_samples() -> dict[str, np.ndarray]:
    """name -> BGR uint8 frame, decoded as the inference server decodes (cv2.imread, colour).

    >>> sorted(load_samples())[:2]
    ['astronaut', 'chelsea']
    """
    return {p.stem: cv2.imread(str(p), cv2.IMREAD_COLOR) for p in sample_paths()}
