#!/usr/bin/env bash
# Wheels the device image lacks for benchmarks/train (rfdetr and what it needs beyond the image, and
# pycocotools; 4.4 MiB): downloaded into DEST (default /work/main/.whl) unless a wheel of that name is
# there, then copied into OWN (default /work/main/.carry/train/whl), so a device call can carry exactly
# these (.whl may hold other runs' wheels). Never deletes anything.
# Run on the development machine: bash benchmarks/train/fetch_wheels.sh [DEST [OWN]]
set -euo pipefail
DEST=${1:-/work/main/.whl}
OWN=${2:-/work/main/.carry/train/whl}
PY=${PY:-/work/main/.venv/bin/python}
mkdir -p "$DEST"
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
for spec in rfdetr==1.11.2 pyDeprecate==0.9.0 supervision==0.31.2 defusedxml==0.7.1 pydantic==2.14.4 \
            pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 pycocotools==2.0.11 torch-linear-assignment==0.1.0; do
  name=${spec%%==*}
  norm=$(echo "$name" | tr 'A-Z-' 'a-z_')
  have=$(cd "$DEST" && ls ${norm}-[0-9]*.whl 2>/dev/null | head -1 || true)
  if [ -z "$have" ]; then
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d "$DEST" "$spec"
    have=$(cd "$DEST" && ls ${norm}-[0-9]*.whl | head -1)
  else
    echo "have $have"
  fi
  mkdir -p "$OWN"
  cp -n "$DEST/$have" "$OWN/"
done
du -ch "$OWN"/*.whl | tail -1
