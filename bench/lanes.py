#!/usr/bin/env python3
"""Client of bench/lanes.sh (standard library only): query latency at concurrency 1, idle and
under a bulk job, against one running stack; writes one JSON object to stdout.

    lanes.py URL MODEL QUERY_SECONDS DOCS_PER_REQUEST WORDS_PER_DOC IN_FLIGHT PASS_TOKENS

Phases: warm-up; idle queries for QUERY_SECONDS; the bound (a bulk request of at most
PASS_TOKENS tokens, alone, three times: its median latency is one bulk pass, overheads
included); then a bulk job (`priority: bulk`, DOCS_PER_REQUEST documents of WORDS_PER_DOC
words per request, IN_FLIGHT requests in flight, sized from the bound's throughput to outlast
the query window) during which queries run again for QUERY_SECONDS (only those that end
while the job still runs count); then the job finishes (at most 900 s).
"""
import json
import math
import random
import statistics
import sys
import threading
import time
import urllib.request

url, model = sys.argv[1], sys.argv[2]
query_s = float(sys.argv[3])
docs_per_request, words_per_doc, in_flight, pass_tokens = map(int, sys.argv[4:8])

WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this be "
    "or has had not but first one their its new after who they have two been also other more "
    "into some time year city world water house system people state school family group "
    "river music power church number part century government history company war area game "
    "early team public series known began national during player called later film while "
    "small north south east west under between many most could would large long since "
    "station road line market field language science design energy light story season"
).split()
rng = random.Random(23)
counter = [0]


def post(body, timeout=900.0):
    req = urllib.request.Request(
        url + "/v1/embeddings",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        answer = json.loads(resp.read())
    return answer["usage"]["prompt_tokens"]


def query():
    counter[0] += 1
    text = f"what is the largest city of country number {counter[0]}"
    t0 = time.perf_counter()
    post({"model": model, "input": text, "input_type": "query"})
    return (time.perf_counter() - t0) * 1000.0


def document():
    return " ".join(rng.choice(WORDS) for _ in range(words_per_doc))


def bulk(n_docs):
    docs = [document() for _ in range(n_docs)]
    t0 = time.perf_counter()
    tokens = post({"model": model, "input": docs, "priority": "bulk"})
    return (time.perf_counter() - t0) * 1000.0, tokens


def pct(values, q):
    values = sorted(values)
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def summary(values):
    return {"n": len(values), "p50_ms": pct(values, 0.5), "p90_ms": pct(values, 0.9)}


out = {}
# Warm-up, and the tokens of one document.
for _ in range(3):
    query()
_, one_doc_tokens = bulk(1)
out["tokens_per_doc"] = one_doc_tokens

idle = []
end = time.perf_counter() + query_s
while time.perf_counter() < end:
    idle.append(query())
out["idle"] = summary(idle)

# The bound: one bulk pass, measured as a bulk request that fits one pass, alone.
pass_docs = max(1, pass_tokens // one_doc_tokens)
passes = [bulk(pass_docs) for _ in range(3)]
out["bound_docs"] = pass_docs
out["bound_tokens"] = passes[0][1]
out["bound_ms"] = statistics.median(ms for ms, _ in passes)
tokens_per_s = passes[0][1] / (out["bound_ms"] / 1000.0)

# The bulk job: enough requests to outlast settle + window + a margin at the bound's rate.
request_tokens = docs_per_request * one_doc_tokens
settle_s = 3.0
need_tokens = tokens_per_s * (settle_s + query_s + 15.0) * 1.3
n_requests = max(2 * in_flight, math.ceil(need_tokens / request_tokens))
out["bulk_requests"] = n_requests
out["bulk_docs_per_request"] = docs_per_request
out["bulk_in_flight"] = in_flight
lock = threading.Lock()
next_request = [0]
ok = [0]
errors = []
bulk_tokens = [0]
done = threading.Event()


def bulk_loop():
    while True:
        with lock:
            if next_request[0] >= n_requests:
                return
            next_request[0] += 1
        try:
            _, tokens = bulk(docs_per_request)
            with lock:
                ok[0] += 1
                bulk_tokens[0] += tokens
        except Exception as err:  # noqa: BLE001 -- every failure is counted and reported
            with lock:
                errors.append(repr(err)[:200])


job_start = time.perf_counter()
threads = [threading.Thread(target=bulk_loop, daemon=True) for _ in range(in_flight)]
for t in threads:
    t.start()
watcher = threading.Thread(target=lambda: ([t.join() for t in threads], done.set()), daemon=True)
watcher.start()
time.sleep(settle_s)
busy = []
late = 0
end = time.perf_counter() + query_s
while time.perf_counter() < end and not done.is_set():
    ms = query()
    if done.is_set():
        late += 1  # the job ended while this query ran: not a query under bulk
    else:
        busy.append(ms)
out["busy"] = summary(busy)
out["busy_dropped_after_job_end"] = late
out["job_outlasted_window"] = not done.is_set()
done.wait(900.0)
job_s = time.perf_counter() - job_start
out["bulk_finished"] = done.is_set()
out["bulk_ok"] = ok[0]
out["bulk_errors"] = errors
out["bulk_seconds"] = job_s
out["bulk_docs_per_s"] = ok[0] * docs_per_request / job_s
out["bulk_tokens_per_s"] = bulk_tokens[0] / job_s
print(json.dumps(out))
