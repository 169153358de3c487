#!/usr/bin/env bash
# The wheels the device image lacks for the GPU benchmarks (server, streams, integration), downloaded
# for the device's Python 3.12 into DEST (default .whl, git-ignored) unless a wheel of that name is
# there; benchmarks/device_env.sh installs them there. The training wheels come from
# benchmarks/train/fetch_wheels.sh. PyAV (av, 36 MiB) is left out unless WITH_AV=1: with it the
# carried tree is close to the 64 MiB limit, so carry it only in the streams call.
# Run on the development machine: bash benchmarks/fetch_device_wheels.sh [DEST [NAME==VERSION ...]]
# (DEST relative to the repository root; named specs replace the default list: train/fetch_wheels.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
[ $# -gt 0 ] && shift
PY=${PY:-.venv/bin/python}
mkdir -p "$DEST"
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
specs="rfdetr==1.11.2 pyDeprecate==0.9.0 supervision==0.31.2 defusedxml==0.7.1 pydantic==2.14.4 pydantic-core==2.50.5
annotated-types==0.8.0 typing-inspection==0.4.5 pycocotools==2.0.11 fastapi==0.163.2 starlette==1.10.0 uvicorn==0.54.0
python-multipart==0.0.34 opentelemetry-api==1.44.0 orjson==3.13.0 httptools==0.9.0 inference-models==0.39.6
backoff==2.2.1 python-dotenv==1.2.2"
[ "${WITH_AV:-0}" = 1 ] && specs="$specs av==18.1.0"
[ $# -gt 0 ] && specs="$*"
for spec in $specs; do
  norm=$(echo "${spec%%==*}" | tr 'A-Z-' 'a-z_')
  if ls "$DEST"/${norm}-[0-9]*.whl >/dev/null 2>&1; then continue; fi
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d "$DEST" "$spec"
done
du -ch "$DEST"/*.whl | tail -1
