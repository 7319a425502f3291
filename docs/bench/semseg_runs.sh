#!/bin/sh
# The semseg table of the README and docs/results.md, and its pictures, in the order they
# were run (one at a time, on the quiet 2-core machine). semseg-camvid-train never saw
# CamVid val, so every val figure comes from it; semseg-camvid is the same recipe on
# train+val. docs/training.md says how each was made.
set -e
CAMVID=../shared/data/camvid
# 1. the four measures of the memory, against the single-frame network, both models, one
#    run: val (15 Hz) and test (1 s apart), every third frame degraded (--corrupt), temporal
#    consistency on val, test and the unlabelled dashcam clip, speed and the memory's cost
vidseg bench --task semseg --data $CAMVID --split val,test --corrupt --model semseg-camvid-train,semseg-camvid \
  --memory fifo,none --slots 1 --consistency ../shared/data/examples/driving.mp4 --report docs/bench/semseg-peak.json --force
# 2. three consecutive frames of driving.mp4 without and with the memory, and where each
#    disagrees with the frame before moved by optical flow
python docs/bench/semseg_flicker.py ../shared/data/examples/driving.mp4 100 docs/semseg-flicker.jpg semseg-camvid-train 1
# 3. the example clip, and the README's frames
vidseg semseg ../shared/data/examples/example.mp4 --format all --out /tmp/example_semseg --force --json
python docs/bench/frame_of.py /tmp/example_semseg/overlay.mp4 60 docs/semseg-example.jpg
mkdir -p /tmp/seq05vd && ln -sf "$(realpath $CAMVID)"/test/Seq05VD_*.jpg /tmp/seq05vd/
vidseg semseg /tmp/seq05vd --format overlay --out /tmp/seq05vd_semseg --force
python docs/bench/frame_of.py /tmp/seq05vd_semseg/overlay.mp4 100 docs/semseg-camvid-test.jpg
