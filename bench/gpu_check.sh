#!/usr/bin/env bash
# The GPU check on a machine with JAX and no TensorFlow (docs/gpu.md):
# install the Keras wheels carried in .whl/ (where Keras is missing), run bench/gpu_check.py,
# then pack what should come back into RESULTS_DIR: gpu_check.md, one
# results.tar.gz (gpu_check.json, every run's log, results.json, history.csv,
# curves.png and predictions.png) and each run's best model without its
# optimizer state, its weights stored as float16 (RUN.keras), where it is at
# most 16 MiB. Each command appends to the results of the ones before it on
# the same machine (docs/gpu.md: `--parts data camvid`, then `--parts speed`).
#
#   bash bench/gpu_check.sh RESULTS_DIR [gpu_check.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:?usage: bash bench/gpu_check.sh RESULTS_DIR [gpu_check.py flags]}
shift
python=${PYTHON:-python3}
if ! "$python" -c "import importlib.util as u; assert u.find_spec('keras')" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
work=${GPU_CHECK_WORK:-/tmp/gpu_check}  # Kept between commands: a later one appends.
mkdir -p "$work"
nvidia-smi -L || true
KERAS_BACKEND=jax "$python" bench/gpu_check.py "$work" "$@" || echo "gpu_check.py: exit $?"
mkdir -p "$results"
cp "$work/gpu_check.md" "$results/" 2>/dev/null || true
cp "$work"/weights/*.keras "$results/" 2>/dev/null || true
(cd "$work" && tar czf "$results/results.tar.gz" gpu_check.json ./*.log \
  runs/*/results.json runs/*/history.csv runs/*/*.png 2>/dev/null) || true
ls -la "$results"
