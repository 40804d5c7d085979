#!/usr/bin/env python3
"""Prints, as JSON, what a benchmark run needs to be read later: the machine (CPU model,
cores, memory), the date, the versions of every system (ours: git revision; the peers: the
packages in their venvs) and the loadgen settings. Called by bench/run-all.sh.

    bench/collect_meta.py --quick 0 --systems ours,ray,infinity --online "..." --bulk "..."
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {
    ".venv-ray": ["ray", "sentence-transformers", "transformers", "torch", "fastapi"],
    ".venv-infinity": ["infinity-emb", "sentence-transformers", "transformers", "torch"],
}


def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu():
    info = {}
    for line in (run("lscpu") or "").splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    mem_kib = next(
        (int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")),
        0,
    )
    flags = info.get("Flags", "").split()
    return {
        "model": info.get("Model name"),
        "cpus": os.cpu_count(),
        "threads_per_core": info.get("Thread(s) per core"),
        "avx512": "avx512f" in flags,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
    }


def venv_versions(venv, packages):
    python = REPO / venv / "bin" / "python"
    if not python.exists():
        return None
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = None\n"
        "print(json.dumps(out))\n"
    )
    text = run(str(python), "-c", code, *packages)
    return json.loads(text) if text else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", default="0")
    parser.add_argument("--systems", default="")
    parser.add_argument("--online", default="")
    parser.add_argument("--bulk", default="")
    parser.add_argument("--models", nargs="*", default=[])
    args = parser.parse_args()

    dirty = bool(run("git", "status", "--porcelain", "--untracked-files=no"))
    meta = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "quick": args.quick not in ("0", "", "false"),
        "systems": [s for s in args.systems.split(",") if s],
        "machine": cpu(),
        "versions": {
            "ours": {"git": (run("git", "rev-parse", "--short", "HEAD") or "?") + ("-dirty" if dirty else ""),
                     "rustc": run("rustc", "--version")},
            "ray": venv_versions(".venv-ray", PACKAGES[".venv-ray"]),
            "infinity": venv_versions(".venv-infinity", PACKAGES[".venv-infinity"]),
        },
        "loadgen": {"online": args.online, "bulk": args.bulk},
        "flags": {k: os.environ[k] for k in ("OURS_FLAGS", "RAY_FLAGS", "INFINITY_FLAGS") if os.environ.get(k)},
        "models": args.models,
        "python": platform.python_version(),
    }
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
