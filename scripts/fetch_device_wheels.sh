#!/usr/bin/env bash
# Download the wheels that scripts/device_check.sh installs on an offline GPU machine.
#
# The GPU machine (see docs/guides/gpus.md, "Checking a GPU machine") has Python 3.12, torch, torchvision,
# numpy, pandas, matplotlib, scikit-learn, pillow, pytest, pytest-timeout, click's usual
# neighbours (jinja2, pyyaml, rich, requests, fsspec, ...) preinstalled and no internet. What the
# project needs beyond that travels as wheels for CPython 3.12 on x86-64 Linux, in .whl/ (ignored
# by git): kedro and kedro-datasets with their dependencies, optuna with its, and click (kedro
# needs click>=8.2; a machine may have an older one). No torch, torchvision, numpy or pandas:
# the machine's own builds are used. kedro-viz is not shipped (the device check runs no test
# that needs it).
#
# The versions are the ones `pip install -e ".[test]"` resolved for this project on 2026-11-27
# (Python 3.11 and 3.12 alike). `--no-deps`: every wheel is named here, nothing else comes.
#
# usage: scripts/fetch_device_wheels.sh [DEST]     (default DEST: .whl, from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
mkdir -p "$DEST"

WHEELS=(
  # kedro and what it needs that a plain scientific Python lacks
  kedro==1.7.0
  kedro-datasets==9.6.0       # extras used: pandas CSV, json, matplotlib, text (no further wheels)
  kedro-telemetry==0.9.0      # kedro depends on it; disabled by KEDRO_DISABLE_TELEMETRY / .telemetry
  click==8.5.1
  cookiecutter==2.7.1
  binaryornot==0.6.0
  arrow==1.4.0
  tzdata==2026.6
  python-slugify==9.2.0
  text-unidecode==1.3
  dynaconf==3.3.5
  GitPython==3.2.1
  gitdb==4.0.12
  smmap==5.0.3
  more-itertools==11.2.1
  omegaconf==2.4.0
  parse==1.22.4
  tomli_w==1.2.0
  appdirs==1.4.4
  # optuna (the search's record and the TPE baseline) and its storage
  optuna==5.0.0
  alembic==1.20.1
  Mako==1.4.3
  SQLAlchemy==2.1.9           # the only compiled wheel (cp312 manylinux)
  colorlog==6.12.0
)

python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"

n=$(ls "$DEST"/*.whl | wc -l)
echo "$n wheels in $DEST ($(du -sh "$DEST" | cut -f1)); expected ${#WHEELS[@]}"
if [ "$n" -ne "${#WHEELS[@]}" ]; then
  echo "error: $DEST holds $n wheels, ${#WHEELS[@]} expected (one version each: empty it and run again)" >&2
  exit 1
fi
