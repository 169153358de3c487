#!/usr/bin/env bash
# Fill the folder the training dataset is built from (default /work/main/.carry/train; ~4 MiB):
#   digits.png             OpenCV samples/data (Debian opencv-doc), 5000 handwritten digits 20x20
#   photos/*.jpg           backgrounds: OpenCV sample photos and scikit-image data photos, as JPEG q92
#   deepforest/*.png,*.xml DeepForest 2.1.0's bundled aerial images with Pascal VOC tree-crown boxes
#   LICENSES.md            where each file came from and under which licence
# Needs network to Debian and PyPI (apt-get download, pip download) and the project venv (OpenCV,
# scikit-image). Run on the development machine: bash benchmarks/train/fetch_material.sh [DEST]
set -euo pipefail
DEST=${1:-/work/main/.carry/train}
PY=${PY:-/work/main/.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$DEST/photos" "$DEST/deepforest"
(cd "$work" && apt-get download opencv-doc >/dev/null 2>&1 && dpkg -x opencv-doc_*_all.deb x)
(cd "$work" && "$PY" -m pip download -q --no-deps deepforest==2.1.0 -d . && \
  "$PY" -m zipfile -e deepforest-2.1.0-py3-none-any.whl df)
ocv="$work/x/usr/share/doc/opencv-doc/examples/data"
cp "$ocv/digits.png" "$DEST/digits.png"
cp "$work/x/usr/share/doc/opencv-doc/copyright" "$DEST/opencv-doc.copyright"
cp "$work/df/deepforest-2.1.0.dist-info/licenses/LICENSE" "$DEST/deepforest.LICENSE"
df="$work/df/deepforest/data"
OCV="$ocv" DF="$df" DEST="$DEST" "$PY" - <<'PY'
import os
from pathlib import Path

import cv2
import skimage
import skimage.data

dest, ocv, df = Path(os.environ["DEST"]), Path(os.environ["OCV"]), Path(os.environ["DF"])
opencv_photos = ["baboon.jpg", "building.jpg", "fruits.jpg", "starry_night.jpg", "leuvenA.jpg", "aloeL.jpg",
                 "board.jpg", "home.jpg", "orange.jpg", "apple.jpg", "squirrel_cls.jpg", "aero1.jpg",
                 "butterfly.jpg", "smarties.png", "pic2.png", "rubberwhale1.png", "box_in_scene.png"]
skimage_photos = {  # name -> licence, from scikit-image's own docstrings
    "astronaut": "public domain (NASA)", "coffee": "CC0 (Rachel Michetti)", "chelsea": "CC0 (Stefan van der Walt)",
    "rocket": "public domain (SpaceX)", "hubble_deep_field": "public domain (NASA)", "grass": "CC0 (CC0Textures)",
    "gravel": "CC0 (CC0Textures)", "brick": "CC0 (CC0Textures)",
}
rows = []
for name in opencv_photos:
    image = cv2.imread(str(ocv / name), cv2.IMREAD_COLOR)
    cv2.imwrite(str(dest / "photos" / f"opencv_{Path(name).stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    rows.append(f"| photos/opencv_{Path(name).stem}.jpg | OpenCV samples/data/{name} (Debian opencv-doc) | Apache-2.0 AND BSD-3-Clause (opencv-doc.copyright, `Files: *`) |")
for name, licence in skimage_photos.items():
    image = getattr(skimage.data, name)()
    image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR if image.ndim == 2 else cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(dest / "photos" / f"skimage_{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    rows.append(f"| photos/skimage_{name}.jpg | scikit-image {skimage.__version__} skimage.data.{name}() | {licence} |")
for stem in ["2019_YELL_2_528000_4978000_image_crop2", "2019_YELL_2_541000_4977000_image_crop", "OSBS_029", "SOAP_061"]:
    image = cv2.imread(str(df / f"{stem}.png"), cv2.IMREAD_COLOR)
    # the largest one is a 15 MB PNG: JPEG keeps the carried folder small (the boxes are unchanged)
    cv2.imwrite(str(dest / "deepforest" / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    (dest / "deepforest" / f"{stem}.xml").write_bytes((df / f"{stem}.xml").read_bytes())
    rows.append(f"| deepforest/{stem}.jpg, .xml | DeepForest 2.1.0 wheel, deepforest/data/{stem}.png (re-encoded JPEG q92) and .xml | MIT (deepforest.LICENSE) |")
rows.insert(0, "| digits.png | OpenCV samples/data/digits.png (Debian opencv-doc 4.6.0) | Apache-2.0 AND BSD-3-Clause (opencv-doc.copyright, `Files: *`) |")
(dest / "LICENSES.md").write_text(
    "# Where the training material comes from\n\nMade by benchmarks/train/fetch_material.sh.\n\n"
    "| file | source | licence |\n| --- | --- | --- |\n" + "\n".join(rows) + "\n")
PY
du -sh "$DEST"
