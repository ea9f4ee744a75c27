#!/usr/bin/env bash
# DeepSeek-V4 on a GPU, in one command (benchmarks/README.md, "DeepSeek-V4 on a GPU"):
#   bash benchmarks/deepseek_v4_gpu.sh
# From the project root, with CUDA vLLM (a release that registers DeepseekV4ForCausalLM) and
# this package and its test dependencies installed. Full logs go to $OUT (default out/), never
# into a pipe: an EngineCore left behind would hold the pipe open.
set -u
out=${OUT:-out}
mkdir -p "$out"
step() { echo "=== $(date +%T) $*"; }

step "correctness: tiny DeepSeek-V4 (every layer kind) against transformers, ids dropped"
python -m pytest -s -m e2e tests/e2e/test_deepseek_v4.py > "$out/v4-test.log" 2>&1
echo "rc=$?"; grep -E "\[e2e\] deepseek|passed|failed|skipped|Error" "$out/v4-test.log" | tail -5

step "nonces/min: the tiny model at seq_len 1024"
python benchmarks/bench_artifacts.py --model .models/tiny-deepseek-v4 --kv-cache-dtype fp8 \
    --batch 32 --seq-len 1024 > "$out/v4-tiny.log" 2>&1
echo "rc=$?"; grep -v WARNING "$out/v4-tiny.log" | tail -12

step "nonces/min: DeepSeek-V4-Flash's sizes, 4 layers, dummy weights"
python -c "from pathlib import Path; from tests.e2e.deepseek_v4.files import write_flash_shape; \
write_flash_shape(Path('.models/deepseek-v4-flash-4-layers'))"
python benchmarks/bench_artifacts.py --model .models/deepseek-v4-flash-4-layers \
    --load-format dummy --kv-cache-dtype fp8 --batch 32 --seq-len 1024 > "$out/v4-flash.log" 2>&1
echo "rc=$?"; grep -v WARNING "$out/v4-flash.log" | tail -12
step done
