#!/usr/bin/env bash
# Runs ON a GPU machine, from the bundle deploy/gpu/prepare.sh makes, after check.sh (or
# alone): the 4B and 8B shapes of Qwen3-Embedding, random weights generated on the machine
# itself (8B in bf16 is ~15 GiB, too big to carry), each benchmarked with `gpu-worker bench`
# in bf16 and fp8 (fp8 on compute capability 9.0 and newer; refused, and so absent, elsewhere)
# on a throughput batch (32 x 512) and a short query (1 x 16). Every step has a timeout; the
# whole stays under 6 minutes. Logs go to $OUT (large.log), the table is printed last.
#
# Usage (device tool, from the repository root, carrying gpu-bundle):  bash gpu-bundle/check-large.sh
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
log="$out/large.log"
: >"$log"
# shellcheck source=deploy/gpu/common.sh
source "$here/common.sh"

for preset in 4b 8b; do
    model=/tmp/qwen3-$preset-random
    if [[ ! -f $model/config.json ]]; then
        say "generating the $preset model"
        timeout "$(cap 150)" python3 "$here/tools/make-random-qwen3.py" --preset "$preset" --out "$model" \
            --max-shard-mb 4000 --tokenizer-dir "$here/fixture" >>"$log" 2>&1 ||
            { echo "$preset: generation failed or timed out (see large.log)"; continue; }
    fi
    for dtype in bf16 fp8; do
        for shape in "--batch 32 --seq-len 512 --iters 5" "--batch 1 --seq-len 16 --iters 100"; do
            say "$preset $dtype $shape"
            # shellcheck disable=SC2086 # $shape holds several arguments
            line=$(timeout "$(cap 90)" "$here/bin/gpu-worker" bench --model "$model" --backend cuda \
                --dtype "$dtype" $shape 2>>"$log" | tail -n 1)
            echo "$preset $dtype $line" >>"$log"
            echo "$preset $dtype ${line:-failed (see large.log)}"
        done
    done
done
echo "== large shapes ($((SECONDS - started)) s)"
