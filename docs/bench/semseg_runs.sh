#!/bin/sh
# The semseg tables of the README, in the order they were run (one at a time, on the quiet
# 2-core machine). semseg-camvid is the shipped model; runs/semseg-memory-concat is the same
# training with TMANet's concatenation instead of the gated fusion (docs/training.md).
set -e
CAMVID=../shared/data/camvid
# 1. CamVid test (233 frames; each sequence streamed in order, so a frame's memory is the
#    test frames before it), the memory against the single-frame network, both runtimes,
#    and 4. temporal consistency on DAVIS 2016 val-dev (30 fps, unlabelled here)
vidseg bench --task semseg --data $CAMVID --split test --model semseg-camvid --memory fifo,none --runtime torch,onnx \
  --consistency ../shared/data/davis16/val-dev --report docs/bench/semseg-test.json --plot docs/bench/semseg-test.png --force
# 3. LMANet's ablations on val, one sweep: memory length 1, 3, 5 (0 is none), radius 2, 4, 8 and
#    global (TMANet's read), gated fusion against concatenation
vidseg bench --task semseg --data $CAMVID --split val --model semseg-camvid,runs/semseg-memory-concat/model.safetensors \
  --memory fifo --slots 1,3,5 --read local,global --radius 2,4,8 \
  --report docs/bench/semseg-ablation.json --plot docs/bench/semseg-ablation.png --force
# 5. the example clip, and the README's overlay frame
vidseg semseg ../shared/data/examples/example.mp4 --format all --out /tmp/example_semseg --force --json
python docs/bench/frame_of.py /tmp/example_semseg/overlay.mp4 60 docs/semseg-example.jpg
