#!/usr/bin/env bash
# The wheels a lent GPU machine lacks for bench/gpu_embedding_rows.sh and bench/gpu_checks.sh, at
# the versions pyproject.toml pins (its image has Python 3.12 with torch, numpy, pandas, scipy,
# matplotlib, tqdm, PyYAML, psutil, attrs, typing-extensions, but not these):
#   bash bench/device_wheels.sh DIR     (then carry DIR; about 57 MB, SimpleITK 53 of them)
set -eu
dir=${1:?usage: bench/device_wheels.sh DIR}
pin() { grep -o "\"$1==[^\"]*\"" "$(dirname "$0")/../pyproject.toml" | tr -d '"'; }
mkdir -p "$dir"
for spec in "$(pin SimpleITK)" "$(pin torchio)" "$(pin nibabel)" "$(pin jsonschema)" deprecated==1.3.1 \
    referencing==0.37.0 jsonschema-specifications==2025.9.1 rpds-py==0.30.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir" "$spec"
done
ls -la "$dir"
