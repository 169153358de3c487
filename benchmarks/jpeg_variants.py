"""Write the bundled samples as JPEG variants, for `rfpipe parity --b ...+gpu-decode` decoder drift runs.

    python benchmarks/jpeg_variants.py /tmp/jpeg-variants
    rfpipe parity MODEL --images /tmp/jpeg-variants --a cuda --b cuda+gpu-decode --device cuda

Per sample: OpenCV quality 75, progressive and grey; Pillow quality 90 with 4:4:4, 4:2:2 and
4:2:0 chroma subsampling; EXIF orientation 6; CMYK (which the device decoder leaves to OpenCV).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
from PIL import Image

from rfpipe.samples import load_samples


def write_variants(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, bgr in load_samples().items():
        opencv = {"q75": (bgr, [cv2.IMWRITE_JPEG_QUALITY, 75]), "progressive": (bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
                  "grey": (cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), [])}
        for variant, (image, params) in opencv.items():
            written.append(out / f"{name}_{variant}.jpg")
            cv2.imwrite(str(written[-1]), image, params)
        rgb = Image.fromarray(bgr[..., ::-1])
        exif = Image.Exif()
        exif[0x0112] = 6
        pillow = {"444": dict(subsampling=0), "422": dict(subsampling=1), "420": dict(subsampling=2),
                  "exif6": dict(exif=exif)}
        for variant, options in pillow.items():
            written.append(out / f"{name}_{variant}.jpg")
            rgb.save(written[-1], quality=90, **options)
        written.append(out / f"{name}_cmyk.jpg")
        rgb.convert("CMYK").save(written[-1], quality=90)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    print(f"{len(write_variants(parser.parse_args().out))} files")
