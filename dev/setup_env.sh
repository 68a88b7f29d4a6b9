#!/usr/bin/env bash
# Creates (or checks) the project's virtual environment in .venv: glip_d2 with its pinned
# dependencies, plus detectron2. Idempotent: on a set-up machine it only verifies imports.
# An already importable official detectron2 is kept; otherwise the pure-Python wheel is rebuilt
# from PyPI's sal-detectron2==0.7.2 (detectron2 commit a59f056) without its CPython-3.10 _C.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GLIP_VENV:-.venv}
PY="$VENV/bin/python"
D2_SRC="sal-detectron2==0.7.2"
D2_SHA256="491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"
STAMP="$VENV/.glip_d2_setup_stamp"

die() { echo "setup_env: ERROR: $*" >&2; exit 1; }

if [ ! -x "$PY" ]; then
  echo "setup_env: creating virtual environment $VENV"
  python3 -m venv "$VENV" || die "could not create $VENV with python3 -m venv (need Python >= 3.10 with venv)"
fi

# Fast path: nothing changed since the last successful set-up and everything imports.
fingerprint=$(cat setup.py dev/setup_env.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$fingerprint" ] \
   && "$PY" -c "import detectron2, glip_d2, torch, torchvision, transformers" 2>/dev/null; then
  echo "setup_env: environment $VENV is ready"
  exit 0
fi

echo "setup_env: installing glip_d2 and its dependencies into $VENV (first run: a few minutes)"
"$PY" -m pip install -q --upgrade "pip>=23" "wheel" || die "pip upgrade failed"
"$PY" -m pip install -q -e ".[dev]" || die "installing glip_d2's dependencies failed (see pip's output above)"

if "$PY" -c "import detectron2" 2>/dev/null; then
  echo "setup_env: using the detectron2 already importable: $("$PY" -c 'import detectron2,os; print(os.path.dirname(detectron2.__file__))')"
else
  echo "setup_env: building a pure-Python detectron2 wheel from PyPI's $D2_SRC"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$work/dl" "$D2_SRC" \
    || die "download of $D2_SRC from PyPI failed (no network to PyPI?). Install an official detectron2 into $VENV instead (see README)."
  whl=$(ls "$work"/dl/sal_detectron2-0.7.2-*.whl 2>/dev/null | head -n 1)
  [ -n "$whl" ] || die "pip downloaded '$(ls "$work/dl")' but no sal_detectron2-0.7.2 wheel"
  got=$(sha256sum "$whl" | cut -d' ' -f1)
  [ "$got" = "$D2_SHA256" ] || die "sha256 of $(basename "$whl") is $got, expected $D2_SHA256: refusing to install it"
  "$PY" -m wheel unpack -d "$work/unpacked" "$whl" >/dev/null || die "wheel unpack of $whl failed"
  root="$work/unpacked/sal_detectron2-0.7.2"
  rm -rf "$root/tools" "$root"/detectron2/_C*.so
  info="$root/sal_detectron2-0.7.2.dist-info"
  grep -v -E '^(tools/|detectron2/_C[^/]*\.so,)' "$info/RECORD" > "$info/RECORD.new" && mv "$info/RECORD.new" "$info/RECORD"
  sed -i -e 's/^Tag: .*/Tag: py3-none-any/' -e 's/^Root-Is-Purelib: .*/Root-Is-Purelib: true/' "$info/WHEEL"
  mkdir -p "$work/packed"
  "$PY" -m wheel pack -d "$work/packed" "$root" >/dev/null || die "wheel pack failed"
  "$PY" -m pip install -q "$work"/packed/*.whl || die "installing the rebuilt detectron2 wheel failed"
fi

"$PY" -c "import detectron2, glip_d2" || die "detectron2 or glip_d2 does not import after set-up"
echo "$fingerprint" > "$STAMP"
echo "setup_env: environment $VENV is ready"
