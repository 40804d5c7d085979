#!/usr/bin/env python3
"""Checks an embedding server's vectors against the qwen3-tiny fixture's golden outputs
(computed by Hugging Face transformers in float32), before any timing: speed from wrong
vectors is not a result. The server must serve the qwen3-tiny model.

Every golden case is sent twice: first in one batch with the others (so padding and batch
composition are exercised), then alone (a server with a cache may answer these from it).
A case passes when the cosine similarity to the golden vector is at least --min-cosine; the
max abs difference is reported too. Exits 0 when every case passes, 1 (with the failing
cases and why) otherwise. --known-deviation ID,...:REASON
names cases a system is known to answer differently (e.g. it strips whitespace from its
inputs): they are still sent and reported, with the reason, but do not fail the check.

APIs:
  seed      POST /api/v1/embedding/api {"input": [...], "is_query": bool} -> [[f32]]
            queries with the default task are sent as is_query=true (the server adds the
            template); a query with another task is sent pre-formatted as a document.
  openai    POST /v1/embeddings {"input": [...]} -> {"data": [{"embedding"}]}
  infinity  POST /embeddings, OpenAI shape
  For openai and infinity, which know no queries, queries are sent pre-formatted
  ("Instruct: {task}\\nQuery:{text}"), as their users do.

    bench/peers/check_golden.py http://127.0.0.1:4008 seed [--golden FILE] [--model NAME]
        [--known-deviation ID,...:REASON]
"""
import argparse
import json
import math
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROUTES = {"seed": "/api/v1/embedding/api", "openai": "/v1/embeddings", "infinity": "/embeddings"}
DEFAULT_GOLDEN = Path(__file__).resolve().parents[2] / "../shared/fixtures/qwen3-tiny/golden.json"
DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"


class ServerError(Exception):
    pass


def post(url, body, timeout):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        raise ServerError(f"HTTP {e.code}: {e.read()[:300].decode(errors='replace')}") from e
    except (urllib.error.URLError, OSError) as e:
        raise ServerError(f"{url}: {e}") from e


def embed(args, texts, is_query):
    """Vectors for texts, in order, through the chosen API."""
    url = args.url.rstrip("/") + ROUTES[args.api]
    if args.api == "seed":
        answer = post(url, {"input": texts, "is_query": is_query}, args.timeout)
        vectors = answer
    else:
        body = {"input": texts}
        if args.model:
            body["model"] = args.model
        answer = post(url, body, args.timeout)
        try:
            data = sorted(answer["data"], key=lambda item: item.get("index", 0))
            vectors = [item["embedding"] for item in data]
        except (KeyError, TypeError) as e:
            raise ServerError(f"unexpected answer shape: {str(answer)[:300]}") from e
    if not isinstance(vectors, list) or len(vectors) != len(texts):
        raise ServerError(f"asked for {len(texts)} vectors, got: {str(vectors)[:300]}")
    return vectors


def request_form(args, case):
    """(text, is_query) to send for a golden case."""
    if not case["is_query"]:
        return case["text"], False
    if args.api == "seed" and case["instruction"] == DEFAULT_TASK:
        return case["text"], True
    return case["formatted"], False


def compare(got, want):
    """(cosine, max abs diff) of two vectors; cosine -inf when the dimensions differ."""
    if len(got) != len(want):
        return -math.inf, math.inf
    dot = sum(g * w for g, w in zip(got, want))
    norms = math.sqrt(sum(g * g for g in got)) * math.sqrt(sum(w * w for w in want))
    cosine = dot / norms if norms else -math.inf
    return cosine, max(abs(g - w) for g, w in zip(got, want))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="base URL of the server, e.g. http://127.0.0.1:4008")
    parser.add_argument("api", choices=sorted(ROUTES))
    parser.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN)
    parser.add_argument("--model", help="model field for openai/infinity requests")
    parser.add_argument("--min-cosine", type=float, default=0.999)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--known-deviation", metavar="ID,...:REASON", default="",
                        help="cases reported but not failed, and why")
    args = parser.parse_args()
    known_ids, _, known_reason = args.known_deviation.partition(":")
    known = {case_id for case_id in known_ids.split(",") if case_id}

    golden = json.loads(args.golden.read_text())
    cases = golden["cases"]
    forms = [request_form(args, case) for case in cases]

    results = {}  # (case id, mode) -> (cosine, max abs diff) or error text
    unknown = known - {case["id"] for case in cases}
    if unknown:
        parser.error(f"--known-deviation names no golden case: {sorted(unknown)}")
    try:
        for is_query in (False, True):
            batch = [(case, text) for case, (text, q) in zip(cases, forms) if q == is_query]
            if not batch:
                continue
            try:
                vectors = embed(args, [text for _, text in batch], is_query)
                for (case, _), vector in zip(batch, vectors):
                    results[case["id"], "batched"] = compare(vector, case["embedding"])
            except ServerError as e:
                for case, _ in batch:
                    results[case["id"], "batched"] = str(e)
        for case, (text, is_query) in zip(cases, forms):
            try:
                (vector,) = embed(args, [text], is_query)
                results[case["id"], "alone"] = compare(vector, case["embedding"])
            except ServerError as e:
                results[case["id"], "alone"] = str(e)
    except KeyboardInterrupt:
        return 2

    failures, deviations = [], []
    worst_cos, worst_diff = math.inf, 0.0
    for (case_id, mode), result in results.items():
        if isinstance(result, str):
            failures.append(f"{case_id} ({mode}): request failed: {result}")
            continue
        cosine, diff = result
        if case_id in known:
            deviations.append(f"{case_id} ({mode}): cosine {cosine:.6f}, max abs diff {diff:.3g}")
            continue
        worst_cos, worst_diff = min(worst_cos, cosine), max(worst_diff, diff)
        if not cosine >= args.min_cosine:
            failures.append(f"{case_id} ({mode}): cosine {cosine:.6f} < {args.min_cosine}, max abs diff {diff:.3g}")

    checked = len(results)
    summary = {
        "url": args.url,
        "api": args.api,
        "checked": checked,
        "failed": len(failures),
        "min_cosine": worst_cos if worst_cos != math.inf else None,
        "max_abs_diff": worst_diff,
        "known_deviations": deviations,
        "known_deviation_reason": known_reason or None,
    }
    print(json.dumps(summary))
    if failures:
        print(f"check_golden: {len(failures)} of {checked} checks FAILED at {args.url} ({args.api}):", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(
        f"check_golden: all {checked - len(deviations)} checks pass at {args.url} ({args.api}): "
        f"min cosine {worst_cos:.7f}, max abs diff {worst_diff:.3g}",
        file=sys.stderr,
    )
    if deviations:
        print(f"check_golden: {len(deviations)} known deviations ({known_reason or 'no reason given'}):", file=sys.stderr)
        for line in deviations:
            print(f"  {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
