#!/usr/bin/env bash
# The CUDA checks in one run, for a lent GPU machine (each step bounded, results under $OUT):
#   1. bf16 ingest of the bundled reader against the GPU's bf16 matmul rate (infini bench --quick)
#   2. the passkey grid on CUDA (bf16 weights, float32 memory), 1K to 1M tokens
#   3. the writer on CUDA: prefill and decode tokens/s, prefill's share of the bf16 matmul rate
#
#   OUT=runs/gpu bash benchmarks/gpu_check.sh
#
# torch must be a CUDA build there. The writer is read from $WRITER (default: where `infini pull
# smollm2` puts it); a file split into parts (`split -b 60M smollm2.safetensors writer.part-`,
# to travel in pieces smaller than a transfer limit) is joined first. Without it, step 3 is
# skipped with a line saying so.
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
WRITER=${WRITER:-$HOME/.local/share/infini/models/smollm2.safetensors}
if [ ! -f "$WRITER" ] && ls writer.part-* >/dev/null 2>&1; then
    WRITER=/tmp/smollm2.safetensors
    cat writer.part-* > "$WRITER"
fi
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name(0))" \
    || { echo "no CUDA GPU or a CPU-only torch: nothing to check"; exit 2; }

step() {  # name, seconds allowed, command...
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "   exit $? (log: $OUT/$name.log)"
    tail -n 25 "$OUT/$name.log"
}

step bench 150 python -m infini_cli bench --quick --device cuda --json --out "$OUT/bench.json"
step passkey 240 python -m infini_cli passkey-test --device cuda --lengths 1k,32k,128k,1m --depths 0,0.5,1 \
    --trials 2 --out "$OUT/passkey"
if [ -f "$WRITER" ]; then
    step writer 150 python benchmarks/bench_writer.py --sections cuda --writer "$WRITER" --reps 3 \
        --out "$OUT/writer-cuda.json"
else
    echo "== writer: skipped ($WRITER is absent)"
fi
