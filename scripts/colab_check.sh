#!/usr/bin/env bash
# make colab-check (and, with --smoke, make colab-smoke): run the chapters on Google
# Colab's package versions, each chapter's setup cell in install mode (it installs
# fm_helpers from this checkout and diffrax, keeping Colab's jax). FM_HELPERS_SOURCE points the install at a temporary copy
# of this working tree, so no git URL is used. See scripts/colab_run.py for the checks.
#
# .venv-colab is built from scripts/colab-requirements.txt (Colab's stack, no diffrax,
# no fm_helpers) with Python 3.13 as on Colab, and rebuilt only when that file or the
# Python changes (stamp file). The runner itself (nbclient) runs from the main .venv, so
# that nothing outside Colab's package set lands in .venv-colab; it resets .venv-colab to
# the recorded baseline before each chapter.
set -euo pipefail
cd "$(dirname "$0")/.."

REQ=scripts/colab-requirements.txt
VENV=.venv-colab
STAMP=$VENV/.stamp
quiet_pip() { grep -v "is ignored: it is neither" || true; }

# Colab runs Python 3.13; use it when it can be found (COLAB_PYTHON overrides).
find_python() {
    if [[ -n "${COLAB_PYTHON:-}" ]]; then echo "$COLAB_PYTHON"; return; fi
    local c
    for c in python3.13 /root/.pyenv/versions/3.13*/bin/python3.13 /usr/bin/python3.13; do
        if "$c" -c 'import venv' >/dev/null 2>&1; then command -v "$c"; return; fi
    done
    echo "colab-check: Python 3.13 (Colab's) not found; using python3 instead" >&2
    command -v python3
}
PY=$(find_python)
KEY="$(sha256sum "$REQ" | cut -d' ' -f1) $("$PY" -c 'import sys; print(sys.version.split()[0])')"

# The runner (nbclient, nbformat) lives in the main .venv.
make --no-print-directory .venv/.installed
t0=$SECONDS
if [[ ! -x $VENV/bin/python || ! -f $STAMP || "$(cat "$STAMP")" != "$KEY" ]]; then
    echo "colab-check: building $VENV with $("$PY" --version) from $REQ"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" 2>&1 | quiet_pip
    # The package set every chapter starts from (the runner resets to it).
    .venv/bin/python scripts/colab_run.py --venv "$VENV" --record-baseline
    echo "$KEY" > "$STAMP"
    echo "colab-check: $VENV ready in $((SECONDS - t0)) s"
fi

export JAX_PLATFORMS=cpu
exec .venv/bin/python scripts/colab_run.py "$@"
