#!/usr/bin/env bash
# Run every test: ruff (lint + format, notebooks included), the unit tests, and every notebook
# re-executed under nbval in the `smoke` profile. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv
cd "$REPO_ROOT"

echo "== ruff: lint and format check"
ruff check .
ruff format --check .

echo "== pytest: unit tests + nbval on every notebook (COURSE_PROFILE=smoke)"
export COURSE_PROFILE=smoke MPLBACKEND=agg
# --durations: the slowest tests are listed at the end, so growth of CI time shows up early.
pytest tests notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=900 \
  -p no:cacheprovider --durations=15 "$@"
