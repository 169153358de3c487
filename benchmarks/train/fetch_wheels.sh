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
specs="rfdetr==1.11.2 pyDeprecate==0.9.0 supervision==0.31.2 defusedxml==0.7.1 pydantic==2.14.4
pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 pycocotools==2.0.11 torch-linear-assignment==0.1.0"
# shellcheck disable=SC2086
PY="$PY" bash "$(dirname "$0")/../fetch_device_wheels.sh" "$DEST" $specs  # downloads what DEST lacks
mkdir -p "$OWN"
for spec in $specs; do
  norm=$(echo "${spec%%==*}" | tr 'A-Z-' 'a-z_')
  cp -n "$DEST"/${norm}-[0-9]*.whl "$OWN/"
done
du -ch "$OWN"/*.whl | tail -1
