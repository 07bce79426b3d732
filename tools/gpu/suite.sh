#!/usr/bin/env bash
# All GPU checks in one call (the device machine is lent for minutes, so they run together):
#   1. correctness on CUDA against the float64 per-token reference (python -m tools.gpu.correctness);
#   2. scoring vs bare-forward throughput and MFU, Llama-2-7B shape in bf16 (python -m tools.gpu.check),
#      and the pair head against two bare forwards (--pair);
#   3. the shared-prefix cache with URIAL on a Llama-2-7B-shaped model (python -m tools.bench.prefix);
#   4. `tdsdist serve` under load, a random Llama-2-7B-shaped pair in bf16 (python -m tools.bench.serve):
#      /v1/score under 8 and 32 clients against `score`, 1/8/32 generate streams, lockstep cost, RSS.
# Needs torch and transformers (and jinja2, numpy, tokenizers); not deepspeed or zarr.
#
#   bash tools/gpu/suite.sh OUT_DIR DATA_DIR
# DATA_DIR holds tokenizer/ (any HF tokenizer folder; SmolLM2's was used),
# just_eval_llama2_7b_chat.json and urial_inst_1k_v4.txt (copies of ../shared/data).
# The python tools run as modules from the repository root (where this script goes first), so
# relative OUT_DIR and DATA_DIR are taken from the directory it was called in. PYTHONPATH gets
# the checkout and testkit/ (tdsdist_testkit, for the correctness models): nothing to install.
set -uo pipefail
out=$(realpath -m "${1:?OUT_DIR}")
data=$(realpath -m "${2:?DATA_DIR}")
mkdir -p "$out"
cd "$(dirname "$0")/../.." || exit 1
export PYTHONPATH=$PWD:$PWD/testkit PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia_smi.txt"
$py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
$py -m tools.gpu.correctness --out "$out/gpu_correctness.json" > "$out/gpu_correctness.log" 2>&1 || status=1
tail -n 12 "$out/gpu_correctness.log"
$py -m tools.gpu.check --out "$out/gpu_check.json" 2>&1 | tail -n 30 || status=1
$py -m tools.gpu.check --pair --sequences 32 --out "$out/gpu_check_pair.json" 2>&1 | tail -n 30 || status=1
budget=16384
$py -m tools.bench.prefix --device cuda --dtype bfloat16 --random-shape llama2-7b \
  --model "$data/tokenizer" --data "$data/just_eval_llama2_7b_chat.json" \
  --urial "$data/urial_inst_1k_v4.txt" --examples 128 --repeats 3 \
  --max-tokens-per-batch "$budget" --compare-masked --out "$out/gpu_prefix_$budget.json" 2>&1 | grep -v Warning | tail -n 12 || status=1
$py -m tools.bench.serve --device cuda --dtype bfloat16 --random-shape llama2-7b \
  --tokenizer "$data/tokenizer" --data "$data/just_eval_llama2_7b_chat.json" --examples 64 \
  --passes 2 --gen-tokens 128 --repeats 3 --threads 4 \
  --out "$out/gpu_serve.json" 2>&1 | grep -v Warning | tail -n 80 || status=1
exit $status
