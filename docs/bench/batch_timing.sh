#!/usr/bin/env bash
# The 10 DAVIS 2016 val-dev sequences three ways, timed whole (start-up included):
# 10 separate `vidseg segment` processes, one `vidseg batch`, and `vidseg batch --jobs 2`.
# Usage: docs/bench/batch_timing.sh ../shared/data/davis16/val-dev [scratch folder]
set -euo pipefail
data=$(realpath "$1")
scratch=${2:-$(mktemp -d)}
mkdir -p "$scratch"
manifest="$scratch/val-dev.csv"
echo "input,mask,out" > "$manifest"
for seq in "$data"/JPEGImages/*/; do
  name=$(basename "$seq")
  echo "$seq,$data/Annotations/$name/00000.png,$scratch/batch/$name" >> "$manifest"
done
seconds() {  # wall time of a command, in seconds with two decimals
  local start=$(date +%s%N)
  "$@" > /dev/null || true  # batch exits 1 when a row fails; the time still counts
  local ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '%d.%02d' $((ms / 1000)) $(((ms % 1000) / 10))
}
separate() {
  for seq in "$data"/JPEGImages/*/; do
    name=$(basename "$seq")
    vidseg segment "$seq" --mask "$data/Annotations/$name/00000.png" --out "$scratch/separate/$name" 2> /dev/null > /dev/null
  done
}
rm -rf "$scratch/separate" "$scratch/batch"
echo "10 separate segment processes: $(seconds separate) s"
echo "batch: $(seconds vidseg batch "$manifest" 2> /dev/null) s"
rm -rf "$scratch/batch"
echo "batch --jobs 2: $(seconds vidseg batch "$manifest" --jobs 2 2> /dev/null) s"
