# Sourced by the course scripts: create or reuse ./.venv and install the tested versions into it.
# Re-installs only when requirements*.txt, constraints.txt or pyproject.toml changed.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${COURSE_VENV:-$REPO_ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

ensure_venv() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: the course needs Python >= 3.10 ('$PYTHON' is $("$PYTHON" --version 2>&1))." >&2
    echo "       Point PYTHON at a newer interpreter, e.g. PYTHON=python3.11 bash $0" >&2
    exit 1
  fi
  [ -x "$VENV/bin/python" ] || { echo "Creating virtual environment in $VENV"; "$PYTHON" -m venv "$VENV"; }
  local stamp="$VENV/.course-install-stamp" wanted
  wanted="$(cd "$REPO_ROOT" && cat requirements*.txt constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "Installing the tested versions (constraints.txt) into $VENV ..."
    (cd "$REPO_ROOT" \
      && "$VENV/bin/python" -m pip install --quiet -c constraints.txt -r requirements-dev.txt -e .)
    echo "$wanted" >"$stamp"
  else
    echo "Reusing the virtual environment in $VENV (up to date)."
  fi
  export PATH="$VENV/bin:$PATH"
}
