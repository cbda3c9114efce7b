#!/usr/bin/env bash
# The GPU numbers of docs/benchmarks.md in one go, on a machine with one NVIDIA GPU:
#   scripts/gpu_benchmarks.sh h100        # writes docs/benchmarks/*_h100.{json,png}
# 1. the enwik8 model's train step at 64K tokens, float32 and bfloat16 (time, MFU);
# 2. the same model's step at 1,048,576 tokens, batch 1, bfloat16;
# 3. this project against HF transformers and reformer-pytorch (needs CUDA builds of torch:
#    pip install -U "jax[cuda12]" torch "transformers>=4.45,<6" reformer-pytorch==1.4.4);
# 4. cached against uncached decoding.
# Each benchmark has its own time limit (seconds, BENCH_TIMEOUT, default 900); one that fails
# does not stop the others, and the script exits non-zero if any failed.
set -uo pipefail
name="${1:?usage: scripts/gpu_benchmarks.sh NAME (the GPU, e.g. h100; names the output files)}"
case "$name" in
  *[!a-z0-9_]*) echo "NAME must be lower-case letters, digits or _, got '$name'" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
limit="${BENCH_TIMEOUT:-900}"
out=docs/benchmarks
failed=()

bench() {  # bench LABEL COMMAND...
  local label="$1"; shift
  echo "== $label: $*"
  local start=$SECONDS
  if timeout "$limit" "$@"; then
    echo "== $label: done in $((SECONDS - start)) s"
  else
    echo "== $label: FAILED (exit $?) after $((SECONDS - start)) s"
    failed+=("$label")
  fi
}

python -c "import jax, sys; sys.exit(jax.devices()[0].platform != 'gpu')" || {
  echo "JAX sees no GPU: install jax[cuda12] or jax[cuda13] on a machine with an NVIDIA GPU" >&2
  exit 2
}
bench step_64k python scripts/bench_step.py --scale enwik8 --lengths 65536 \
  --variants lsh_reversible --dtypes float32,bfloat16 --out "$out/step_$name.json"
bench step_1m python scripts/bench_step.py --scale enwik8 --lengths 1048576 --tokens 1048576 \
  --variants lsh_reversible --dtypes bfloat16 --repeats 3 --max_temp_gib 75 \
  --out "$out/step_1m_$name.json"
bench peers python scripts/bench_peers.py --device gpu --impls ours,hf,lucidrains \
  --out "$out/peers_$name.json"
bench decode python scripts/bench_decode.py --out "$out/decode_$name.json"

if ((${#failed[@]})); then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all done; outputs in $out/*_$name.*"
