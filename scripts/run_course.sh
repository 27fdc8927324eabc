#!/usr/bin/env bash
# Run the whole course: execute every notebook in order in the default profile
# (`gpu` when CUDA is available, else `cpu`; set COURSE_PROFILE to choose).
#   bash scripts/run_course.sh             executed copies go to artifacts/notebooks/
#   bash scripts/run_course.sh --in-place  overwrite notebooks/ (maintainers refreshing outputs)
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv
cd "$REPO_ROOT"

in_place=false
case "${1:-}" in
  "") ;;
  --in-place) in_place=true ;;
  *) echo "usage: bash scripts/run_course.sh [--in-place]" >&2; exit 2 ;;
esac

artifacts="$(python -c 'from course_utils import config; print(config.artifacts_dir())')"
out="$artifacts/notebooks"
mkdir -p "$out"
python -c 'from course_utils import config; config.print_environment()'

for notebook in notebooks/[0-9][0-9]_*.ipynb; do
  echo "== $(basename "$notebook")"
  start=$SECONDS
  if $in_place; then
    jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=-1 "$notebook"
  else
    jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=-1 \
      --output-dir "$out" "$notebook"
  fi
  echo "   done in $((SECONDS - start)) s"
done

echo
if $in_place; then
  echo "Executed notebooks: $REPO_ROOT/notebooks (updated in place)"
else
  echo "Executed notebooks: $out"
fi
echo "Figures:            $artifacts/figures"
