#!/usr/bin/env bash
# A short run against the lowest versions pyproject.toml allows, in a venv of its own: import every
# module, `fastgen demo --n-images 5`, and a few API tests. Dependencies of the dependencies resolve
# to the newest releases those lowest versions accept. torch stays at the CPU build CI installs
# (its lowest allowed release would pull a CUDA build of several GB; see lowest_constraints.py).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q torch==2.13.0
python3 .ci/lowest_constraints.py > "$work/constraints.txt"
echo "+ lowest versions: $(tr '\n' ' ' < "$work/constraints.txt")"
"$py" -m pip install -q -c "$work/constraints.txt" -e . "pytest>=8" "hypothesis>=6"
"$py" -m pip install -q --no-deps open-clip-torch
"$py" -m pip list 2>/dev/null | grep -i -E "^(torch|diffusers|transformers|safetensors|numpy|scipy|pillow|tqdm|scikit-learn|huggingface.hub) "
"$py" .ci/import_all.py
"$work/venv/bin/fastgen" demo --n-images 5
# A few API tests: settings, results, classes, and the metrics with a command line run on the
# embedded model (the demo above loads it through from_pretrained).
"$py" -m pytest -q -p no:cacheprovider tests/test_config.py tests/test_result.py tests/test_classes.py \
    tests/test_eval_shape_metrics.py
