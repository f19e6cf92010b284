#!/usr/bin/env bash
# One GPU measurement on a fresh machine: install the requirements, then run
# bench/gpu_check.py, all within GPU_CHECK_TOTAL_S seconds (default 450).
#
#   bash bench/gpu_check.sh OUT_DIR                     # into python3 (or $PYTHON)
#   bash bench/gpu_check.sh --venv .venv OUT_DIR        # into a new virtual env
#   bash bench/gpu_check.sh --no-install OUT_DIR --dry-run    # CPU, tiny sizes
#
# Flags after OUT_DIR go to gpu_check.py. The install's minutes come off its
# --budget-s, and `timeout` stops it 30 s after that, so the whole run stays
# under 8 minutes; OUT_DIR gets gpu_check.json, gpu_check.md, gpu_check.log
# and the demo's results.json and predictions.png.
set -euo pipefail
total_s=${GPU_CHECK_TOTAL_S:-450}
python=${PYTHON:-python3}
venv=
install=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --venv) venv=$(realpath -m "${2:?--venv needs a folder}"); shift 2 ;;
    --no-install) install=0; shift ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if [[ $# -lt 1 ]]; then
  echo "usage: bash bench/gpu_check.sh [--venv DIR] [--no-install] OUT_DIR [gpu_check.py flags]" >&2
  exit 2
fi
out=$(realpath -m "$1")
shift
mkdir -p "$out"
cd "$(dirname "$0")/.."
if [[ -n $venv ]]; then
  [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
  python=$venv/bin/python
fi
log=$out/gpu_check.log
: >"$log"

if ((install)); then
  packages=(-r requirements.txt)
  if command -v nvidia-smi >/dev/null; then
    # The plain wheel finds no GPU without the CUDA libraries of its extra.
    spec=$(grep -E '^tensorflow *[<>=]' requirements.txt | cut -d'#' -f1 | tr -d ' ')
    packages+=("tensorflow[and-cuda]${spec#tensorflow}")
  fi
  echo "pip install ${packages[*]}" | tee -a "$log"
  # Few retries: a machine that reaches no registry should fail in seconds.
  "$python" -m pip install --quiet --retries 1 --timeout 20 "${packages[@]}" 2>&1 \
    | tee -a "$log" \
    || echo "gpu_check.sh: pip install failed; going on with what $python has" \
    | tee -a "$log"
fi
# Looked up, not imported: importing TensorFlow takes seconds.
find='import importlib.util as u, sys; sys.exit(not (u.find_spec("tensorflow") and u.find_spec("keras")))'
if ! "$python" -c "$find"; then
  echo "gpu_check.sh: $python has no tensorflow or keras; nothing measured" \
    | tee -a "$log"
  exit 1
fi

budget_s=$((total_s - SECONDS))
limit_s=$((budget_s > 0 ? budget_s + 30 : 30))
echo "gpu_check.sh: $SECONDS s to install; $budget_s s left for gpu_check.py" | tee -a "$log"
status=0
PYTHONUNBUFFERED=1 timeout --kill-after=10 "$limit_s" \
  "$python" bench/gpu_check.py "$out" --budget-s "$budget_s" "$@" 2>&1 \
  | tee -a "$log" || status=$?
if ((status == 124 || status == 137)); then
  echo "gpu_check.sh: stopped after $limit_s s; gpu_check.json holds what was measured" \
    | tee -a "$log"
fi
exit "$status"
