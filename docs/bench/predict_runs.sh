#!/bin/sh
# The prediction tables of the README, in the order they were run (one at a time, on the
# quiet 2-core machine), with the shipped predictor predict-mmnist.
set -e
DIGITS=../shared/data/mnist/mnist_5k.csv.gz
# 1. the headline: all 10,000 held-out test sequences (predict-mmnist alone, before v2 shipped)
vidseg bench --task predict --data $DIGITS --model predict-mmnist --memory stremn \
  --report docs/bench/predict-test.json --plot docs/bench/predict-test.png --force
# 1b. the headline since predict-mmnist-v2: both models with and without memory, and SimVP
vidseg bench --task predict --data $DIGITS --model predict-mmnist-v2,predict-mmnist,predict-mmnist-simvp \
  --memory stremn,none --report docs/bench/predict-test-v2.json --plot docs/bench/predict-test-v2.png --force
# 1c. the SimVP peer trained on the squared error alone (predict-mmnist-v2's budget)
vidseg bench --task predict --data $DIGITS --model predict-mmnist-simvp-mse --memory none \
  --report docs/bench/predict-simvp-mse.json --plot docs/bench/predict-simvp-mse.png --force
# 2. the memory's worth, and 3. the update rules at K=5 (the first 1,000 test sequences)
vidseg bench --task predict --data $DIGITS --model predict-mmnist --memory stremn,fifo,first-last,none --limit 1000 \
  --report docs/bench/predict-memory.json --plot docs/bench/predict-memory.png --force
vidseg bench --task predict --data $DIGITS --model predict-mmnist --memory stremn --update A,B,C,D --limit 1000 \
  --report docs/bench/predict-rules.json --force
