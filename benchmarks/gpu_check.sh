#!/usr/bin/env bash
# The GPU check (issue 14), for the day a device is lent; under 10 minutes on one GPU, never part of CI.
#   1. the device tests on the GPU: tests/test_device_contracts.py (every attack, interpreter, metric, the
#      fault checks and an experiment run, against the CPU) and the CUDA cases of
#      tests/test_interpreters_gradient.py (IDLS_TEST_DEVICE=cuda);
#   2. ADV² on ResNet-50 (random weights, 224 px, batch 16) for every interpreter, seconds per image beside
#      paper 000 Table III -> benchmarks/results/gpu.json (benchmarks/gpu_check.py).
# Usage:
#   benchmarks/gpu_check.sh                        # on a CUDA machine
#   benchmarks/gpu_check.sh --device cpu --quick   # smoke test anywhere: the same steps with tiny settings
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3). Exit status: 0 when both
# steps succeeded, else the first failure's (both steps always run).
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
QUICK=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=(--quick); shift ;;
    *) echo "usage: $0 [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
  esac
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" IDLS_TEST_DEVICE="$DEVICE"
started=$SECONDS
status=0

echo "== 1/2 device tests on $DEVICE"
pytest_=("$PYTHON" -m pytest -q -p no:randomly -p no:cacheprovider)
timeout 180 "${pytest_[@]}" tests/test_device_contracts.py || status=$?
if [ "$DEVICE" != cpu ]; then  # the oracle tests' device cases (ids end in -cuda)
  timeout 60 "${pytest_[@]}" tests/test_interpreters_gradient.py -k "$DEVICE" || { rc=$?; [ $status -eq 0 ] && status=$rc; }
fi

echo "== 2/2 ADV² per interpreter on $DEVICE"
timeout 330 "$PYTHON" benchmarks/gpu_check.py --device "$DEVICE" "${QUICK[@]}" || { rc=$?; [ $status -eq 0 ] && status=$rc; }

echo "== gpu check: $((SECONDS - started)) s, exit status $status"
exit $status
