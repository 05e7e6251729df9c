#!/usr/bin/env bash
# One prepared device run: slide feature extraction with a ViT-L/16 (UNI-sized, random weights,
# bf16) on a lent GPU: model-only vs pathmllm patches/s (feeding ratio) for several DataLoader
# worker counts, and the simple loop. See docs/benchmarks.md ("On a lent GPU") for how to
# prepare .whl and .gpudata here and call it with the device tool; ~6-8 min on an H200.
#
#   bash benchmarks/gpu/features_h200.sh                    # on the device machine
#   SKIP_WHEELS=1 DEVICE=cpu ENCODER=vit-s16 SIZE=8000 WORKERS=0,1 BATCH=16 PRECISION=fp32 PY=.venv/bin/python \
#     bash benchmarks/gpu/features_h200.sh                  # a dry run of the same script here
set -uo pipefail
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
ENCODER=${ENCODER:-uni}
SIZE=${SIZE:-60000}          # level-0 px of the synthetic slide (0.25 um/px): ~5000 patches at 0.5 um/px
WORKERS=${WORKERS:-4,8,12}
BATCH=${BATCH:-256}
PRECISION=${PRECISION:-bf16}
OUT=${OUT:-/tmp/pathmllm-gpu}
mkdir -p "$OUT"
if [ -z "${SKIP_WHEELS:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then  # packages the device image lacks (openslide, shapely, imagecodecs)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}  # the project is not pip-installed there
export PYTHONUNBUFFERED=1
[ -d .gpudata ] && export PATHMLLM_DATA=$PWD/.gpudata  # the example slide and H&E tiles, carried
$PY - <<'PYEOF' || exit 1
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
PYEOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
SLIDE="$OUT/synthetic_${SIZE}.tiff"
t0=$(date +%s)
$PY benchmarks/synthetic_slide.py "$SIZE" --out "$SLIDE" || exit 1
echo "synthetic slide: $(( $(date +%s) - t0 )) s"
$PY benchmarks/bench_features.py --slide "$SLIDE" --encoder "$ENCODER" --device "$DEVICE" \
  --precision "$PRECISION" --batch-size "$BATCH" --num-workers "$WORKERS" --rounds 2 --no-per-patch \
  2>&1 | grep -v -i "warn"
