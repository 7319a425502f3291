#!/bin/sh
# The prediction tables of the README, in the order they were run (one at a time, on the
# quiet 2-core machine), with the shipped predictor predict-mmnist.
set -e
DIGITS=../shared/data/mnist/mnist_5k.csv.gz
# 1. the headline: all 10,000 held-out test sequences
vidseg bench --task predict --data $DIGITS --model predict-mmnist --memory stremn \
  --report docs/bench/predict-test.json --plot docs/bench/predict-test.png --force
# 2. the memory's worth, and 3. the update rules at K=5 (the first 1,000 test sequences)
vidseg bench --task predict --data $DIGITS --model predict-mmnist --memory stremn,fifo,first-last,none --limit 1000 \
  --report docs/bench/predict-memory.json --plot docs/bench/predict-memory.png --force
vidseg bench --task predict --data $DIGITS --model predict-mmnist --memory stremn --update A,B,C,D --limit 1000 \
  --report docs/bench/predict-rules.json --force
