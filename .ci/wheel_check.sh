#!/usr/bin/env bash
# The package as a user gets it: build the wheel from the checkout's files, install it into a fresh
# virtual environment (the exact tested versions of constraints.txt, from the configured package
# index), and run `idls --version` and `idls demo --quick` there, outside the checkout and with an
# empty cache, so nothing beside the checkout can stand in for files missing from the wheel.
#
# Usage: .ci/wheel_check.sh            (PYTHON=python3.11 by default, like the Makefile)
# Exits non-zero on the first failing step; everything it makes lives in one temporary folder.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
WORK="$(mktemp -d "${TMPDIR:-/tmp}/idls-wheel-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
started=$SECONDS
step() { echo "wheel check [$((SECONDS - started)) s]: $*"; }
quietly() {  # run "$@" with its output in a log, shown only when it fails (pip warns about every index)
    "$@" >"$WORK/step.log" 2>&1 || { cat "$WORK/step.log" >&2; echo "wheel check: failed: $*" >&2; return 1; }
}

# 1. build from a copy of the checkout's files (tracked and not ignored): the build writes no
#    build/ or *.egg-info into the checkout, and stray ignored files cannot slip into the wheel
step "building the wheel"
mkdir "$WORK/src"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' file; do if [ -e "$file" ]; then printf '%s\0' "$file"; fi; done \
        | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
else
    cp -r "$ROOT/." "$WORK/src"
fi
quietly "$PYTHON" -m pip wheel --no-deps --wheel-dir "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/idls-*.whl)"
VERSION="$(basename "$WHEEL" | cut -d- -f2)"
step "built $(basename "$WHEEL")"

# 2. a fresh virtual environment holding only the wheel and its dependencies
"$PYTHON" -m venv "$WORK/venv"
quietly "$WORK/venv/bin/python" -m pip install -c "$ROOT/constraints.txt" "$WHEEL"
step "installed into a fresh virtual environment"

# 3. run it from an empty folder with an empty cache (the embedded model and its RTS masker come from the
#    weights the wheel ships: a demo that trains them means the wheel lacks its package data)
mkdir "$WORK/run"
cd "$WORK/run"
unset PYTHONPATH
export IDLS_CACHE_DIR="$WORK/cache"
location="$("$WORK/venv/bin/python" -c 'import idls; print(idls.__file__)')"
case "$location" in
    "$WORK/venv/"*) ;;
    *) echo "wheel check: idls was imported from $location, not from the fresh environment" >&2; exit 1 ;;
esac
reported="$("$WORK/venv/bin/idls" --version)"
if [ "$reported" != "idls $VERSION" ]; then
    echo "wheel check: 'idls --version' printed '$reported', expected 'idls $VERSION'" >&2
    exit 1
fi
step "$reported"
"$WORK/venv/bin/idls" demo --quick --out "$WORK/run/demo" 2>&1 | tee "$WORK/demo.log"
if grep -q "idls: training the embedded" "$WORK/demo.log"; then
    echo "wheel check: the demo trained the embedded models: the wheel does not ship idls/pretrained" >&2
    exit 1
fi
for file in report.html summary.json results.jsonl; do
    if [ ! -s "$WORK/run/demo/$file" ]; then
        echo "wheel check: the demo wrote no $file" >&2
        exit 1
    fi
done
step "passed: the wheel installs into a fresh environment and 'idls demo --quick' runs from it"
