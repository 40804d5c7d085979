#!/usr/bin/env python3
"""Embed texts through the public NATS API (nats-py + msgpack).

    pip install nats-py msgpack
    python3 nats_client.py --url nats://127.0.0.1:4222 "first text" "second text"

Prints one JSON object: {"vectors": [[...], ...], "tokens": [...]} in input order.
"""
import argparse
import asyncio
import json
import struct
import uuid

import msgpack
import nats


async def embed(nc, texts, input_type="document", instruction=None, dimensions=None,
                subject="embed.requests", timeout=30.0):
    request_id = str(uuid.uuid4())
    request = {"id": request_id, "input": texts, "input_type": input_type}
    if instruction is not None:
        request["instruction"] = instruction
    if dimensions is not None:
        request["dimensions"] = dimensions

    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    await nc.publish(subject, msgpack.packb(request), reply=inbox)

    vectors, tokens, held = [None] * len(texts), [0] * len(texts), 0
    try:
        while held < len(texts):
            message = await replies.next_msg(timeout=timeout)
            reply = msgpack.unpackb(message.data)
            if "error" in reply:
                raise RuntimeError(f"{reply['error']['code']}: {reply['error']['message']}")
            dims = reply["dims"]
            values = struct.unpack(f"<{reply['count'] * dims}f", reply["embeddings"])
            for k in range(reply["count"]):
                vectors[reply["offset"] + k] = list(values[k * dims:(k + 1) * dims])
                tokens[reply["offset"] + k] = reply["tokens"][k]
                held += 1
    finally:
        await replies.unsubscribe()
    return vectors, tokens


async def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--query", action="store_true", help="embed the texts as queries")
    parser.add_argument("--instruction")
    parser.add_argument("--dimensions", type=int)
    args = parser.parse_args()

    nc = await nats.connect(args.url)
    try:
        vectors, tokens = await embed(nc, args.texts, "query" if args.query else "document",
                                      args.instruction, args.dimensions)
    finally:
        await nc.close()
    print(json.dumps({"vectors": vectors, "tokens": tokens}))


if __name__ == "__main__":
    asyncio.run(main())
