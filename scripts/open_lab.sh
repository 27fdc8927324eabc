#!/usr/bin/env bash
# Open the course in JupyterLab, using the same virtual environment as the other scripts.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv
cd "$REPO_ROOT"
exec jupyter lab notebooks/ "$@"
