#!/usr/bin/env bash
# The GPU checks of issues 14 and 15, one script, under 8 minutes on one data-centre GPU:
#   1. VGG-16 600x1000 inference, frcnn vs torchvision's FasterRCNN on the same weights: fp32, then bf16
#      autocast (ms per image, images/s, peak memory);
#   2. one VGG-16 600x1000 training step of each (fp32, bf16 autocast): time and peak memory;
#   3. issue 15: one VGG-16 600x1000 joint training step, non-approximate (RoI warping, 128 RoIs x 512
#      channels) against approximate: time ratio and the peak GPU memory of each;
#   4. 50 steps of the paper preset (experiment=paper/voc07_vgg16_joint: VGG-16, 600 px, SGD, 2000 / 300
#      proposals) under trainer.precision=bf16-mixed, on generated data (random init: no network there).
# Usage: bash scripts/gpu_check.sh [out_dir]   (needs a CUDA build of torch and one visible GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-outputs/gpu_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python - <<'PY'
import torch
assert torch.cuda.is_available(), "gpu_check.sh: torch sees no CUDA device"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU {torch.cuda.get_device_name(0)}")
PY
for precision in "" "--bf16"; do
  python scripts/benchmark.py --device cuda --threads 8 --size paper --mode infer --repeats 20 $precision
  python scripts/benchmark.py --device cuda --threads 8 --size paper --mode train --repeats 10 $precision
done
python scripts/benchmark.py --device cuda --threads 8 --size paper --mode warp --repeats 10
start=$(date +%s)
python train.py experiment=paper/voc07_vgg16_joint data=shapes data.image_size=[600,1000] data.num_train=100 \
  data.num_val=20 backbone.weights=null trainer=gpu trainer.precision=bf16-mixed schedule.joint.max_steps=50 \
  'schedule.joint.lr_steps=[40]' recipe.val_every_n_epochs=null logger=csv run_dir="$out/paper_bf16_50" \
  hydra.run.dir="$out/paper_bf16_50"
echo "paper preset, 50 steps bf16-mixed: $(( $(date +%s) - start )) s (with start-up and the final evaluation)"
python - "$out/paper_bf16_50" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
print("stage seconds:", m["stage_seconds"], "map_50:", m["map_50"])
PY
