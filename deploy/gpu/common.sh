# Sourced by check.sh, check-large.sh and check-torch.sh on the GPU machine: the folder for
# logs, the step clock, each step's timeout cut so that the whole script ends within 6
# minutes, the CUDA libraries on the library path, and the unpacked executables.
#
# Needs `here` (the bundle's folder) set by the caller.

# Logs go to $OUT (the device tool brings that folder back), else the bundle's out/.
out=${OUT:-$here/out}
mkdir -p "$out"

started=$SECONDS
say() { echo "[$((SECONDS - started))s] $*" >&2; }
# A step's timeout, cut so that the whole script ends within 6 minutes.
total=360
cap() {
    local t=$1 left=$((total - (SECONDS - started)))
    ((left < t)) && t=$left
    ((t < 1)) && t=1
    echo "$t"
}

# --- CUDA libraries: NVRTC and cuBLAS from Python's nvidia packages, the driver's folder ----
libdirs=$(python3 - <<'PY'
import glob, os, sys
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
roots += ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
found = {}
for name in ("libnvrtc.so.13", "libnvrtc-builtins.so.13.0", "libcublas.so.13", "libcublasLt.so.13"):
    for root in roots:
        hits = sorted(glob.glob(os.path.join(root, "**", name), recursive=True))
        if hits:
            found[name] = os.path.dirname(hits[0])
            break
    else:
        print(f"missing {name}", file=sys.stderr)
print(":".join(dict.fromkeys(found.values())))
PY
)
for driver_dir in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu; do
    [[ -e $driver_dir/libcuda.so.1 ]] && libdirs="$libdirs:$driver_dir" && break
done
export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# bench_line MODEL DTYPE ARGS...: `gpu-worker bench` of MODEL on the CUDA backend in DTYPE, for
# at most 90 s: its last line (the JSON report, or nothing useful when it failed) on stdout,
# its log on stderr.
bench_line() {
    local model=$1 dtype=$2
    shift 2
    timeout "$(cap 90)" "$here/bin/gpu-worker" bench --model "$model" --backend cuda --dtype "$dtype" "$@" |
        tail -n 1
}

# The gpu-worker binary and test executables, and serve.sh's binaries, run.sh, configuration
# and tokenizer (packed by prepare.sh to fit the carry limit), unless a script before this one
# unpacked them.
[[ -x $here/bin/gpu-worker ]] ||
    python3 -W ignore::DeprecationWarning -m tarfile -e "$here/serve.tar.xz" "$here" ||
    echo "serve.tar.xz did not unpack" >&2
