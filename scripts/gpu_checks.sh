#!/usr/bin/env bash
# The checks that need a GPU, in one command, each bounded in time and logged (docs/training.md, "Measured on a GPU"):
#
#   bash scripts/gpu_checks.sh OUT_DIR            # on a machine with a CUDA GPU and JAX with CUDA
#   GPU_CHECKS_SMALL=1 bash scripts/gpu_checks.sh /tmp/g   # tiny shapes, any machine: checks this script itself
#
# 1. attention: cuDNN flash attention == the XLA path in bf16, outputs and gradients, for the causal, padding and
#    bidirectional-block masks, with and without GQA (tests/test_attention_impl.py cudnn).
# 2. train_step_1b: the trainer's real LLaMA step (clipping + AdamW, state donated) for the `1b` preset in bf16,
#    batch 8 x 2048, plain and with the chunked head + CE, beside an 8192^3 bf16 matmul, interleaved; prints the MFU
#    against the chip's datasheet peak; two steps of the plain variant are traced (OUT_DIR/profile) and xplane.log
#    says where their device time went (GEMM, attention, fusions, copies; top ops). train_step_1b_hf: HF
#    transformers on CUDA (torch autocast bf16), same shapes, in its own process (beside ours, on one 141 GB H200,
#    it ran out of memory).
# 3. sampler_7b: the ViPRA-style action-chunk latency of the `7b` backbone in bf16 (prefix + 10 Euler steps,
#    prefix KV cache vs naive recomputation), LWM-like layout (256 tokens per frame, 128-token prompt, 14 slots).
# 4. train_step_1b_b16 (only when time is left): batch 16 with the layers unrolled (the scanned step asked XLA for
#    101 GB of temporaries there).
#
# Each check runs under `timeout`; its whole output is in OUT_DIR/<name>.log and its tail is echoed. Exit status: the
# number of checks that failed.
set -u
out=${1:?usage: bash scripts/gpu_checks.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# JAX and torch share the GPU in the train-step comparison: allocate on demand instead of JAX taking 75 % up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
budget=${GPU_CHECKS_BUDGET_S:-540}  # seconds; optional checks are skipped when less than their limit is left
t0=$(date +%s)
failed=0

check() {  # check NAME LIMIT_S OPTIONAL CMD...
  local name=$1 limit=$2 optional=$3
  shift 3
  local left=$((budget - ($(date +%s) - t0)))
  if [ "$optional" = 1 ] && [ "$left" -lt "$limit" ]; then
    echo "== $name: skipped (${left} s of the budget left, it needs up to ${limit} s)"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$((left > 30 ? left : 30))
  echo "== $name (limit ${limit} s): $*"
  local start rc
  start=$(date +%s)
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "-- $name: exit $rc after $(($(date +%s) - start)) s"
  tail -n 30 "$out/$name.log"
  [ "$rc" = 0 ] || failed=$((failed + 1))
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
"$py" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

if [ "${GPU_CHECKS_SMALL:-0}" = 1 ]; then
  tiny=(--hidden 32 --layers 1 --heads 2 --ffn 64 --vocab 64 --seq 16 --batch 2 --peak-size 128 --attention-chunk 8)
  check train_step_1b 120 0 "$py" "$root/scripts/benchmark.py" train-step "${tiny[@]}" --rounds 1 --steps 1 --lean 8,0 \
    --no-hf --profile "$out/profile"
  check xplane 90 0 "$py" "$root/scripts/benchmark.py" xplane "$out/profile" --top 30
  check train_step_1b_hf 120 0 "$py" "$root/scripts/benchmark.py" train-step "${tiny[@]}" --rounds 1 --steps 1 --hf-only
  check sampler_7b 120 0 "$py" "$root/scripts/benchmark.py" sampler --sizes demo --dtype bfloat16 --steps 2 \
    --repeats 1 --json "$out/sampler_7b.json"
  check train_step_1b_b16 120 1 "$py" "$root/scripts/benchmark.py" train-step "${tiny[@]}" --rounds 1 --steps 1 --no-hf
else
  check attention 120 0 "$py" "$root/tests/test_attention_impl.py" cudnn
  b1=("$root/scripts/benchmark.py" train-step --preset 1b --dtype bfloat16 --batch 8 --seq 2048 --peak-size 8192)
  check train_step_1b 200 0 "$py" "${b1[@]}" --rounds 3 --steps 3 --lean 2048,0 --no-hf --profile "$out/profile"
  check xplane 90 0 "$py" "$root/scripts/benchmark.py" xplane "$out/profile" --top 30
  check train_step_1b_hf 120 0 "$py" "${b1[@]}" --rounds 2 --steps 3 --hf-only
  check sampler_7b 180 0 "$py" "$root/scripts/benchmark.py" sampler --sizes 7b --dtype bfloat16 \
    --tokens-per-frame 256 --prompt-len 128 --slots 14 --steps 10 --repeats 10 --json "$out/sampler_7b.json"
  check train_step_1b_b16 150 1 "$py" "$root/scripts/benchmark.py" train-step --preset 1b --dtype bfloat16 \
    --batch 16 --seq 2048 --peak-size 8192 --rounds 2 --steps 3 --no-hf --no-scan
fi
echo "gpu_checks: $failed failed, $(($(date +%s) - t0)) s in all; logs in $out"
exit "$failed"
