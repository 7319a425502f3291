#!/bin/sh
# The semseg tables of the README, in the order they were run (one at a time, on the quiet
# 2-core machine). semseg-camvid is the shipped model (EfficientNet-Lite1, trained on CamVid
# train+val, crop 384); runs/semseg-trainval384-memory is the one it replaced (the same on
# Lite0; its file is the package's semseg-camvid at commit 1e04668, `git show
# 1e04668:vidseg_cli/weights/semseg-camvid.safetensors`);
# runs/semseg-memory-gated is the first (train only, settings chosen on val: the ablations
# on val use it and its concatenation twin runs/semseg-memory-concat, which never saw val).
# docs/training.md says how each was made.
set -e
CAMVID=../shared/data/camvid
PREVIOUS=runs/semseg-memory-gated/model.safetensors
REPLACED=runs/semseg-trainval384-memory/model.safetensors
# the replaced model's file, from the commit that shipped it (git keeps it; runs/ may not)
[ -f $REPLACED ] || { mkdir -p "$(dirname $REPLACED)"; git show 1e04668:vidseg_cli/weights/semseg-camvid.safetensors > $REPLACED; }
# 1. CamVid test (233 frames; each sequence streamed in order, so a frame's memory is the
#    test frames before it), the memory against the single-frame network, both runtimes,
#    the shipped model beside the one it replaced
vidseg bench --task semseg --data $CAMVID --split test --model semseg-camvid,$REPLACED --memory fifo,none --size 480,360 --runtime torch,onnx \
  --report docs/bench/semseg-test.json --plot docs/bench/semseg-test.png --force
# 4. temporal consistency on DAVIS 2016 val-dev (30 fps, unlabelled here), the shipped model
vidseg bench --task semseg --data $CAMVID --split test --model semseg-camvid --memory fifo,none \
  --consistency ../shared/data/davis16/val-dev --report docs/bench/semseg-consistency.json --force
# 3. LMANet's ablations on val, one sweep (run when semseg-camvid was $PREVIOUS, the same file):
#    memory length 1, 3, 5 (0 is none), radius 2, 4, 8 and
#    global (TMANet's read), gated fusion against concatenation (models trained on train only)
vidseg bench --task semseg --data $CAMVID --split val --model $PREVIOUS,runs/semseg-memory-concat/model.safetensors \
  --memory fifo --slots 1,3,5 --read local,global --radius 2,4,8 \
  --report docs/bench/semseg-ablation.json --plot docs/bench/semseg-ablation.png --force
# 5. the example clip, and the README's frames
vidseg semseg ../shared/data/examples/example.mp4 --format all --out /tmp/example_semseg --force --json
python docs/bench/frame_of.py /tmp/example_semseg/overlay.mp4 60 docs/semseg-example.jpg
mkdir -p /tmp/seq05vd && ln -sf "$(realpath $CAMVID)"/test/Seq05VD_*.jpg /tmp/seq05vd/
vidseg semseg /tmp/seq05vd --format overlay --out /tmp/seq05vd_semseg --force
python docs/bench/frame_of.py /tmp/seq05vd_semseg/overlay.mp4 100 docs/semseg-camvid-test.jpg
