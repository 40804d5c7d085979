#!/usr/bin/env python3
"""Retrieval in three steps over the gateway's HTTP API (standard library only):
embed a small corpus, search it by cosine similarity, rerank the top results.

    python3 retrieval.py --url http://127.0.0.1:4008 --top-k 3 "What is the capital of China?"

Prints one JSON object: {"search": [{"index", "cosine"}...], "reranked": [{"index", "score"}...]},
indices into CORPUS, best first.
"""
import argparse
import json
import math
import urllib.request

CORPUS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "Tokio is an asynchronous runtime for the Rust programming language.",
    "Paris is the capital and largest city of France.",
    "Rice is cooked by simmering it in water until it is soft.",
    "Beijing hosted the Summer Olympic Games in 2008.",
]


def post(url, path, body, api_key=None):
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url + path, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def embed(url, texts, input_type, api_key=None):
    answer = post(url, "/v1/embeddings", {"input": texts, "input_type": input_type}, api_key)
    return [item["embedding"] for item in sorted(answer["data"], key=lambda d: d["index"])]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("query")
    parser.add_argument("--url", default="http://127.0.0.1:4008")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--api-key")
    args = parser.parse_args()

    # 1. Embed the corpus (documents) and the query (with the query instruction).
    documents = embed(args.url, CORPUS, "document", args.api_key)
    (query,) = embed(args.url, [args.query], "query", args.api_key)

    # 2. Search: the top-k documents by cosine similarity.
    search = sorted(
        ({"index": i, "cosine": cosine(query, d)} for i, d in enumerate(documents)),
        key=lambda hit: -hit["cosine"],
    )[: args.top_k]

    # 3. Rerank those candidates with the cross-encoder; map back to corpus indices.
    candidates = [CORPUS[hit["index"]] for hit in search]
    answer = post(args.url, "/v1/rerank", {"query": args.query, "documents": candidates}, args.api_key)
    reranked = [
        {"index": search[r["index"]]["index"], "score": r["relevance_score"]}
        for r in answer["results"]
    ]
    print(json.dumps({"search": search, "reranked": reranked}))


if __name__ == "__main__":
    main()
