#!/usr/bin/env python3
"""Writes the generated section of docs/benchmarks.md (between `<!-- bench:begin -->` and
`<!-- bench:end -->`, appended when absent; the hand-written sections are kept) and
docs/img/latency-throughput.png from a results directory of bench/run-all.sh: the golden
checks, one table of every loadgen run, the machine and the versions, and a plot of p50
latency against throughput per system for the online workload.

    bench/report.py RESULTS_DIR [--doc docs/benchmarks.md] [--png docs/img/latency-throughput.png]
"""
import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
SYSTEMS = {
    "ours": "ours (gateway + NATS + workers, CPU f32)",
    "ray": "seed: Ray Serve + sentence-transformers",
    "infinity": "Infinity (infinity_emb v2)",
}
MODELS = {"tiny": "qwen3-tiny", "0.6b": "random 0.6B-shaped"}


def load_runs(results):
    """Every loadgen JSON line, with the model it ran on (from the file name)."""
    runs = []
    for path in sorted(results.glob("*.jsonl")):
        model = path.stem.split("-")[1]
        for line in path.read_text().splitlines():
            if line.strip():
                run = json.loads(line)
                run["model"] = MODELS.get(model, model)
                runs.append(run)
    order = list(SYSTEMS)
    runs.sort(key=lambda r: (r["workload"] != "online", order.index(r["system"]) if r["system"] in order else 99,
                             r["concurrency"]))
    return runs


def fmt(x, digits=1):
    """x with `digits` decimals, more below 10 so small rates keep 3 significant digits."""
    if x is None:
        return ""
    if 0 < abs(x) < 10:
        digits = max(digits, 2 - int(f"{abs(x):e}".split("e")[1]))
    return f"{x:,.{digits}f}"


def golden_table(results, systems):
    lines = ["| system | golden check (qwen3-tiny) | min cosine | max abs diff |", "|---|---|---|---|"]
    for system in systems:
        path = results / f"golden-{system}.json"
        if not path.exists():
            lines.append(f"| {system} | not run | | |")
            continue
        record = json.loads(path.read_text())
        summary = record.get("summary") or {}
        if record["passed"]:
            deviations = summary.get("known_deviations") or []
            verdict = f"pass ({summary.get('checked', 0) - len(deviations)} checks)"
            if deviations:
                cases = ", ".join(sorted({d.split(" ")[0] for d in deviations}))
                cosines = ", ".join(sorted({d.split("cosine ")[1].split(",")[0] for d in deviations}))
                verdict += (f"; not counted, {len(deviations)} known deviations ({cases}: cosine {cosines}): "
                            f"{summary.get('known_deviation_reason')}")
        else:
            first = [l.strip() for l in (record.get("detail") or record.get("reason") or "").splitlines() if l.strip()]
            reason = "; ".join(first[1:4] if len(first) > 1 else first)[:300].replace("|", "\\|")
            verdict = f"**FAIL**: {reason}" if reason else "**FAIL**"
        cos = summary.get("min_cosine")
        lines.append(f"| {system} | {verdict} | {fmt(cos, 7) if cos is not None else ''} | "
                     f"{summary.get('max_abs_diff', 0):.2g} |" if summary else f"| {system} | {verdict} | | |")
    return lines


def runs_table(runs):
    lines = [
        "| system | model | workload | concurrency | texts/request | req/s | texts/s | tokens/s | p50 ms | p90 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lat = r["latency_ms"]
        approx = "≈" if r["tokens_source"].startswith("estimate") else ""
        lines.append(
            f"| {r['system']} | {r['model']} | {r['workload']} | {r['concurrency']} | {r['batch']} | "
            f"{fmt(r['req_per_s'])} | {fmt(r['inputs_per_s'])} | {approx}{fmt(r['tokens_per_s'], 0)} | "
            f"{fmt(lat.get('p50'), 2)} | {fmt(lat.get('p90'), 2)} | {fmt(lat.get('p99'), 2)} | {r['errors_total']} |"
        )
    return lines


def plot(runs, png):
    """p50 latency (log) against req/s, one line per system, online runs only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for system in dict.fromkeys(r["system"] for r in runs):
        points = sorted((r["concurrency"], r["req_per_s"], r["latency_ms"]["p50"])
                        for r in runs if r["system"] == system and r["workload"] == "online" and r["ok"])
        if not points:
            continue
        ax.plot([p[1] for p in points], [p[2] for p in points], marker="o", label=SYSTEMS.get(system, system))
        for concurrency, x, y in points:
            ax.annotate(f"c={concurrency}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("p50 latency (ms, log scale)")
    ax.set_title("Online queries, qwen3-tiny: latency against throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png)


def load_meta(results):
    """The settings of the run in RESULTS_DIR: one meta*.json per bench/run-all.sh invocation
    that wrote there (a run split over sittings with --systems and one --results has one per
    part). Parts must share the machine and the workloads; each system's versions and date
    come from the part that ran it."""
    parts = [json.loads(path.read_text()) for path in sorted(results.glob("meta*.json"))]
    if not parts:
        sys.exit(f"report.py: no meta*.json in {results}")
    first = parts[0]
    for part in parts[1:]:
        for key in ("quick", "loadgen"):
            if part[key] != first[key]:
                sys.exit(f"report.py: the parts in {results} differ in {key}: {first[key]} and {part[key]}")
        if part["machine"]["model"] != first["machine"]["model"] or part["machine"]["cpus"] != first["machine"]["cpus"]:
            sys.exit(f"report.py: the parts in {results} ran on different machines")
    parts.sort(key=lambda part: part["date_utc"])
    merged = dict(first, systems=[], versions=dict(first["versions"]), flags={}, parts=parts)
    for part in parts:
        merged["systems"] += [s for s in part["systems"] if s not in merged["systems"]]
        merged["flags"].update(part.get("flags") or {})
        for system in part["systems"]:
            merged["versions"][system] = part["versions"].get(system)
        merged["date_utc"] = part["date_utc"]
    return merged


def when(meta):
    """The date of a run, or of each part of a split one."""
    parts = meta.get("parts") or [meta]
    if len(parts) == 1:
        return f"{meta['date_utc']} UTC"
    listed = "; ".join(f"{', '.join(part['systems'])} finished {part['date_utc']} UTC" for part in parts)
    return f"in {len(parts)} parts on this machine (one `--systems` each, into one results directory): {listed}"


def section(results, meta, runs, png_rel):
    machine, versions = meta["machine"], meta["versions"]
    ray, inf = versions.get("ray") or {}, versions.get("infinity") or {}
    out = [
        BEGIN,
        "<!-- Generated by bench/run-all.sh (bench/report.py): edits here are overwritten. -->",
        "",
        "## Serving: ours against the seed's Ray Serve stack and Infinity",
        "",
    ]
    if meta.get("quick"):
        out += ["**Quick run (`--quick`): seconds-long runs to check the scripts. These numbers are not measurements.**", ""]
    out += [
        f"`bench/run-all.sh{' --quick' if meta.get('quick') else ''}`, {when(meta)}. "
        f"Machine: {machine['model']}, {machine['cpus']} CPUs, {machine['memory_gib']} GiB "
        f"(AVX-512: {'yes' if machine['avx512'] else 'no'}); every server and the load generator share it.",
        "",
        "Systems, each serving the same model directories (published Qwen3-Embedding layout, written by "
        "`bench/peers/st_layout.py`) with its own defaults:",
        f"- **ours**: `deploy/local/run.sh --profile production --backend cpu --tokenizer-workers 1 --gpu-workers 1`, git {versions['ours']['git']} "
        f"({versions['ours'].get('rustc') or 'rustc ?'}); seed API.",
        f"- **ray** (the seed's stack): `bench/peers/serve-ray.sh` = `bench/peers/ray_serve_app.py`, dev profile "
        f"(1 replica, all CPUs, max 100 in flight, LRU cache); ray {ray.get('ray')}, sentence-transformers "
        f"{ray.get('sentence-transformers')}, transformers {ray.get('transformers')}, torch {ray.get('torch')}; seed API.",
        f"- **infinity**: `bench/peers/serve-infinity.sh` = `infinity_emb v2 --model-id DIR`; infinity-emb "
        f"{inf.get('infinity-emb')}, sentence-transformers {inf.get('sentence-transformers')}, transformers "
        f"{inf.get('transformers')}, torch {inf.get('torch')}; OpenAI-shaped `/embeddings`.",
    ]
    if meta.get("flags"):
        out += ["", "Flags changed for this run: " + ", ".join(f"`{k}={v}`" for k, v in meta["flags"].items()) + "."]
    out += [
        "",
        "Vectors first: each system's answers for the fixture's golden cases (alone and batched) against "
        "transformers float32 (`bench/peers/check_golden.py`, cosine >= 0.999). A system that fails is not timed.",
        "",
    ]
    out += golden_table(results, meta.get("systems") or list(SYSTEMS))
    out += [
        "",
        f"Load (`loadgen`, closed loop, on the same CPUs): online = one distinct 8-32 token query per request "
        f"(`{meta['loadgen']['online']}`) on qwen3-tiny, which measures the serving path; bulk = documents of "
        f"32-512 tokens (`{meta['loadgen']['bulk']}`) on the random 0.6B-shaped model, which measures compute. "
        "Seed-API queries carry `is_query: true`, so ours and ray also embed the instruction template (about 20 "
        "more tokens per query, not counted in tokens/s); Infinity gets the bare query. Tokens/s are loadgen's "
        "estimate (words × 1.3) for every system, marked ≈: the seed API reports no usage, and Infinity's "
        "`usage.total_tokens` is a character count.",
        "",
    ]
    out += runs_table(runs) if runs else ["No timed runs."]
    notes = [path.read_text().strip() for path in sorted(results.glob("start-failed-*.txt"))]
    if notes:
        out += ["", "Not timed:"] + [f"- {note}" for note in notes]
    if png_rel:
        out += ["", f"![p50 latency against throughput, online workload]({png_rel})"]
    out += ["", END]
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--doc", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--png", type=Path, default=REPO / "docs/img/latency-throughput.png")
    args = parser.parse_args()

    meta = load_meta(args.results)
    runs = load_runs(args.results)
    png_rel = None
    if any(r["workload"] == "online" for r in runs):
        plot(runs, args.png)
        png_rel = Path(args.png.resolve()).relative_to(args.doc.resolve().parent).as_posix()
    text = section(args.results, meta, runs, png_rel)
    doc = args.doc.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    doc = pattern.sub(lambda _: text, doc) if pattern.search(doc) else doc.rstrip("\n") + "\n\n" + text + "\n"
    args.doc.write_text(doc)
    print(f"report.py: wrote {args.doc}" + (f" and {args.png}" if png_rel else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
