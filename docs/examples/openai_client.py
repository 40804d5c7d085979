#!/usr/bin/env python3
"""Embed texts through the gateway's OpenAI route with the official `openai` client.

    pip install openai
    python3 openai_client.py --base-url http://127.0.0.1:4008/v1 "first text" "second text"

The API key comes from --api-key or OPENAI_API_KEY (any value when the gateway has no keys).
Prints one JSON object: {"vectors": [[...], ...], "total_tokens": N} in input order.
"""
import argparse
import base64
import json
import os
import struct

import openai


def embed(client, texts, model, dimensions=None, encoding_format="float", query=False,
          instruction=None):
    options = {}
    if dimensions is not None:
        options["dimensions"] = dimensions
    # Extensions of the OpenAI request: queries get the instruction template.
    extra = {"input_type": "query" if query else "document"}
    if instruction is not None:
        extra["instruction"] = instruction
    response = client.embeddings.create(model=model, input=texts, encoding_format=encoding_format,
                                        extra_body=extra, **options)
    vectors = []
    for item in sorted(response.data, key=lambda item: item.index):
        if encoding_format == "base64":
            # Little-endian float32 values, base64-encoded: 4 bytes per value.
            raw = base64.b64decode(item.embedding)
            vectors.append(list(struct.unpack(f"<{len(raw) // 4}f", raw)))
        else:
            vectors.append(item.embedding)
    return vectors, response.usage.total_tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--base-url", default="http://127.0.0.1:4008/v1")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
    parser.add_argument("--model", default="Qwen/Qwen3-Embedding-0.6B")
    parser.add_argument("--dimensions", type=int)
    parser.add_argument("--encoding-format", choices=["float", "base64"], default="float")
    parser.add_argument("--query", action="store_true", help="embed the texts as queries")
    parser.add_argument("--instruction")
    args = parser.parse_args()

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=2)
    vectors, total_tokens = embed(client, args.texts, args.model, args.dimensions,
                                  args.encoding_format, args.query, args.instruction)
    print(json.dumps({"vectors": vectors, "total_tokens": total_tokens}))


if __name__ == "__main__":
    main()
