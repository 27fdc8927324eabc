#!/usr/bin/env bash
# Run every test: ruff (lint + format, notebooks included), the unit tests, and every notebook
# re-executed under nbval in the `smoke` profile, then the worked solutions (solutions/, after
# the notebooks, so they reuse the networks the notebooks trained). Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv
cd "$REPO_ROOT"

echo "== ruff: lint and format check"
ruff check .
ruff format --check .

echo "== pytest: unit tests + nbval on every notebook and solution (COURSE_PROFILE=smoke)"
export COURSE_PROFILE=smoke MPLBACKEND=agg
# --durations: the slowest tests are listed at the end, so growth of CI time shows up early.
pytest tests notebooks solutions --nbval-lax --nbval-current-env --nbval-cell-timeout=900 \
  -p no:cacheprovider --durations=15 "$@"
