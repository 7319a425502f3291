#!/usr/bin/env bash
# The README's "Several at once" table: each task with this checkout's vidseg, and with the
# version before issue 38 (an install of commit 369d198 in its own venv, given as $1).
# Each run alone on the 2-core machine. About 25 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
before=${1:?usage: docs/bench/parallel_runs.sh /path/to/venv-of-369d198/bin/python}
for task in segment semseg predict; do
  frames=30; [ "$task" = predict ] && frames=300
  python docs/bench/parallel.py "$task" --frames "$frames" --runs 2 --runs 4 --alone 8 --json "docs/bench/parallel-$task.json"
  "$before" docs/bench/parallel.py "$task" --frames "$frames" --runs 2 --runs 4 --json "docs/bench/parallel-$task-before.json"
done
