#!/usr/bin/env bash
# Memory soak (not run in CI): starts the stack with deploy/local/run.sh (release build,
# CARGO_TARGET_DIR respected), drives steady load with loadgen for N minutes, samples the
# resident memory (VmRSS) of every process of the stack into a CSV, and prints each process's
# growth after the warm-up: first sample after it against the last (pass/fail at
# --max-growth percent) and against the largest. Exits 1 when a process grew past the limit
# or died.
#
#   deploy/local/soak.sh [--minutes 10] [--warmup-minutes 2] [--interval 5] [--concurrency 16]
#                        [--model DIR] [--profile production] [--max-growth 5] [--out soak.csv]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)

minutes=10
warmup_minutes=2
interval=5
concurrency=16
model="$repo/../shared/fixtures/qwen3-tiny"
profile=production
max_growth=5
out=""

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --warmup-minutes) warmup_minutes=$2; shift 2 ;;
    --interval) interval=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --max-growth) max_growth=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "soak.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -d "$model" ]] || { echo "soak.sh: no model directory $model (pass --model)" >&2; exit 2; }
# --model and --out are relative to where soak.sh is started.
model=$(cd "$model" && pwd)
if [[ -n $out && $out != /* ]]; then out=$PWD/$out; fi
cd "$repo"
duration_s=$(python3 -c "print(int(float('$minutes') * 60))")
warmup_s=$(python3 -c "print(int(float('$warmup_minutes') * 60))")
((warmup_s < duration_s)) || { echo "soak.sh: the warm-up must be shorter than the run" >&2; exit 2; }

bin_dir="${CARGO_TARGET_DIR:-$repo/target}/release"
echo "soak.sh: building release binaries into $bin_dir"
cargo build --release --locked --bin gateway --bin tokenizer-worker --bin gpu-worker --bin loadgen

run_dir=$(mktemp -d)
out=${out:-$run_dir/soak.csv}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"

stack_pid=""
loadgen_pid=""
cleanup() {
  [[ -n "$loadgen_pid" ]] && kill -TERM "$loadgen_pid" 2>/dev/null || true
  if [[ -n "$stack_pid" ]]; then
    kill -TERM "$stack_pid" 2>/dev/null || true
    wait "$stack_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "soak.sh: starting the stack on $url (profile $profile, one worker per stage, CPU backend)"
deploy/local/run.sh --model "$model" --port "$port" --backend cpu --profile "$profile" \
  --tokenizer-workers 1 --gpu-workers 1 >"$run_dir/stack.log" 2>&1 &
stack_pid=$!
for _ in $(seq 600); do
  grep -q "run.sh: ready" "$run_dir/stack.log" && break
  kill -0 "$stack_pid" 2>/dev/null || { cat "$run_dir/stack.log" >&2; echo "soak.sh: the stack did not start" >&2; exit 1; }
  sleep 0.5
done
grep -q "run.sh: ready" "$run_dir/stack.log" || { echo "soak.sh: the stack never became ready" >&2; exit 1; }

# The processes run.sh started: nats-server, the workers and the gateway.
declare -A names=()
for pid in $(ps -o pid= --ppid "$stack_pid"); do
  name=$(cat "/proc/$pid/comm" 2>/dev/null || true)
  case "$name" in
    nats-server|gateway|gpu-worker|tokenizer-work*) names[$pid]=$name ;;
  esac
done
((${#names[@]} == 4)) || { echo "soak.sh: expected 4 processes, found: ${names[*]}" >&2; exit 1; }

echo "soak.sh: $minutes min of loadgen (online, concurrency $concurrency), RSS every ${interval}s into $out"
"$bin_dir/loadgen" --url "$url" --api openai --workload online --concurrency "$concurrency" \
  --duration "$duration_s" --warmup 0 --out "$run_dir/loadgen.jsonl" >"$run_dir/loadgen.log" 2>&1 &
loadgen_pid=$!

echo "elapsed_s,process,pid,rss_kb" >"$out"
started=$(date +%s)
died=""
while kill -0 "$loadgen_pid" 2>/dev/null; do
  elapsed=$(($(date +%s) - started))
  for pid in "${!names[@]}"; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    if [[ -z "$rss" ]]; then
      died+=" ${names[$pid]}($pid)"
      unset "names[$pid]"
      continue
    fi
    echo "$elapsed,${names[$pid]},$pid,$rss" >>"$out"
  done
  sleep "$interval"
done
loadgen_status=0
wait "$loadgen_pid" || loadgen_status=$?
loadgen_pid=""
cat "$run_dir/loadgen.log"

verdict=0
python3 - "$out" "$warmup_s" "$max_growth" <<'PY' || verdict=$?
import csv, sys
path, warmup, limit = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
series = {}
for row in csv.DictReader(open(path)):
    key = f"{row['process']} ({row['pid']})"
    series.setdefault(key, []).append((float(row["elapsed_s"]), int(row["rss_kb"])))
failed = False
print(f"\nRSS after the {warmup:.0f} s warm-up (MiB); pass when last <= first + {limit}%")
print(f"{'process':<26} {'samples':>7} {'first':>9} {'last':>9} {'max':>9} {'growth':>8} {'max growth':>10}  verdict")
for key, points in sorted(series.items()):
    after = [rss for t, rss in points if t >= warmup]
    if len(after) < 2:
        print(f"{key:<26} too few samples after the warm-up")
        failed = True
        continue
    first, last, peak = after[0], after[-1], max(after)
    growth = 100.0 * (last - first) / first
    peak_growth = 100.0 * (peak - first) / first
    ok = growth <= limit
    failed |= not ok
    mib = lambda kb: kb / 1024
    print(f"{key:<26} {len(after):>7} {mib(first):>9.1f} {mib(last):>9.1f} {mib(peak):>9.1f} "
          f"{growth:>7.1f}% {peak_growth:>9.1f}%  {'pass' if ok else 'FAIL'}")
sys.exit(1 if failed else 0)
PY
echo "soak.sh: samples in $out; stack log in $run_dir/stack.log"
if [[ -n "$died" ]]; then
  echo "soak.sh: FAIL: processes died during the soak:$died" >&2
  exit 1
fi
((loadgen_status == 0)) || { echo "soak.sh: loadgen exited with $loadgen_status" >&2; exit 1; }
exit "$verdict"
