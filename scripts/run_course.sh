#!/usr/bin/env bash
# Run the whole course: execute every notebook in order in the default profile
# (`gpu` when CUDA is available, else `cpu`; set COURSE_PROFILE to choose).
#   bash scripts/run_course.sh               executed copies go to artifacts/notebooks/
#   bash scripts/run_course.sh --only 04 05  just these notebooks
#   bash scripts/run_course.sh --in-place    overwrite notebooks/ (maintainers refreshing outputs)
# Before each notebook it says what the notebook does and how long it took when last measured;
# training progress reaches the terminal; a failure names the notebook and the cell (exit 1).
# Then it builds the course website (scripts/build_site.py), showing this run's executed copies
# where there are any, and prints its path.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv
cd "$REPO_ROOT"

python -c 'from course_utils import config; config.print_environment()'
python scripts/run_notebooks.py "$@"
executed="$(python -c 'from course_utils import config; print(config.artifacts_dir() / "notebooks")')"
case " $* " in *" --in-place "*) executed=notebooks ;; esac
python scripts/build_site.py --executed "$executed"
