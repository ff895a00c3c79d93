#!/usr/bin/env bash
# The README's tour, runnable as is: the whole workflow on a small synthetic set, one torch/OpenMP thread
# (8.3 minutes of CPU time; 18 minutes wall on a 2-core machine shared with other jobs). For real data
# replace `data` with the competition folder and use the GPU settings of docs/recipes.md (e.g. --arch unetpp
# --encoder efficientnet-b4 --size 1024 --encoder-weights imagenet) and drop the thread limit.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # one thread: the timing above, and steady on a busy machine
cd "${1:-.}"

boneseg synth data --patients 16 --test-patients 2 --size 256           # or your competition folder
boneseg eda data --out eda                                                # tables, eda/*.png, eda/eda.json
boneseg split data --folds 4 -o splits.json                               # patient-grouped folds

for fold in 0 1; do                                                       # one model per fold
  boneseg train data --arch unet --encoder resnet18 --size 160 --splits splits.json --fold $fold \
      --epochs 40 --batch-size 4 --lr 3e-3 --aug none --encoder-weights none --out runs/unet-f$fold
done

boneseg tta data -m runs/unet-f0 --splits splits.json --fold 0 --thresholds-out thresholds.json
boneseg predict data -m runs/unet-f0 -m runs/unet-f1 --tta hflip --threshold thresholds.json \
    --save-probs probs -o sub.csv                                         # 2-model average + TTA
boneseg check sub.csv --images data --size 256

boneseg predict data -m runs/unet-f0 -o f0.csv
boneseg predict data -m runs/unet-f1 -o f1.csv
boneseg ensemble sub.csv f0.csv f1.csv --vote hard -o vote.csv           # majority vote over CSVs

boneseg pseudo probs data -o pseudo --threshold 0.3                       # test images + traced polygons
boneseg train data --pseudo pseudo --arch unet --encoder resnet18 --size 160 --splits splits.json \
    --fold 0 --epochs 40 --batch-size 4 --lr 3e-3 --aug none --encoder-weights none --out runs/unet-f0-pseudo

boneseg predict data/train/DCM -m runs/unet-f0 -o val-f0.csv              # the train images, to score fold 0
boneseg predict data/train/DCM -m runs/unet-f0-pseudo -o val-f0-pseudo.csv
boneseg analyze val-f0.csv val-f0-pseudo.csv --gt data --splits splits.json --fold 0 --out analysis
boneseg report val-f0.csv val-f0-pseudo.csv --gt data --splits splits.json --fold 0 -o report   # open report/index.html
