#!/usr/bin/env bash
# GPU training throughput (issue 12 part 4) in one command, sized for about 8 minutes on one GPU:
#
#   bash benchmarks/gpu_train_speed.sh            # on the GPU machine, from the repository root
#
# Every trainable model of train.models through the product path (python -m components.train, as DVC runs
# it; benchmarks/train_speed.py says exactly what samples/s times) at batch 256 and 4096, precision 32-true
# and bf16-mixed, 2 epochs each (the first includes CUDA warm-up; both are averaged, as train.json does),
# no test evaluation. With two or more GPUs, also a 2-process DDP run (NCCL) of every model at batch 4096
# per rank. Writes under $OUT (default benchmarks/out/gpu): train_speed_gpu.json, train_speed_gpu_ddp.json
# (2+ GPUs only), nvidia-smi.txt, and the log. Copy the JSON files to benchmarks/results/ to publish them.
#
# Needs: data/split (carry it: it is a DVC output, ignored by git), python3 with torch (CUDA), Lightning,
# pandas, pyarrow, PyYAML. Not needed: faiss, Great Expectations, kfp, DVC (the training path imports none;
# tests/components/test_train_compile_and_gpu_path.py checks that on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
MODELS="${MODELS:-youtube_dnn,mind,comirec_dr,comirec_sa,umi}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS=ignore
exec > >(tee "$OUT/gpu_train_speed.log") 2>&1

date -u
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpus", torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
assert torch.cuda.is_available(), "no CUDA device visible"
for name in ("faiss", "great_expectations", "kfp", "dvc"):
    sys.modules[name] = None  # the training path must not need them
import components.train, components.task, components.train_data  # noqa: F401
print("training path imports: ok")
EOF
[ -f data/split/train.parquet ] || { echo "data/split/train.parquet missing: carry data/split"; exit 2; }

# 5 models x 2 batch sizes x 2 precisions = 20 training runs of 2 epochs (~15-20 s each incl. start-up)
timeout 420 "$PY" benchmarks/train_speed.py --models "$MODELS" --accelerator gpu --threads 0 \
    --batch-sizes 256,4096 --precisions 32-true,bf16-mixed --max-epochs 2 --no-eval --no-profile \
    --out "$OUT/train_speed_gpu.json"

NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -ge 2 ]; then
  timeout 180 "$PY" benchmarks/train_speed.py --models "$MODELS" --accelerator gpu --threads 0 --devices 2 \
      --strategy ddp --batch-sizes 4096 --precisions bf16-mixed --max-epochs 2 --no-eval --no-profile \
      --out "$OUT/train_speed_gpu_ddp.json"
else
  echo "one GPU: no DDP run" | tee "$OUT/ddp_skipped.txt"
fi
date -u
