#!/usr/bin/env python3
"""PyTorch + transformers forward-pass throughput on synthetic batches: the reference that
`gpu-worker bench` is compared with. Same workload: `--batch` sequences of `--seq-len` random
token ids, one untimed warm-up, `--iters` timed passes, the last-token hidden state pooled.
Prints one JSON line with tokens_per_s.

    bench/torch_forward.py --model DIR --dtype f32 --batch 8 --seq-len 128 --iters 5
"""
import argparse
import json
import time

import torch
from transformers import AutoModel


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.dtype == "f32" else torch.bfloat16
    model = AutoModel.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa").to(args.device).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 150_000, (args.batch, args.seq_len), generator=generator).to(args.device)
    mask = torch.ones_like(ids)

    def forward():
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = torch.nn.functional.normalize(hidden[:, -1].float(), dim=-1)
            if args.device != "cpu":
                torch.cuda.synchronize()
            return pooled

    forward()
    start = time.perf_counter()
    for _ in range(args.iters):
        forward()
    seconds = time.perf_counter() - start
    print(json.dumps({
        "system": "pytorch+transformers",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "iters": args.iters,
        "ms_per_batch": seconds * 1e3 / args.iters,
        "tokens_per_s": args.batch * args.seq_len * args.iters / seconds,
    }))


if __name__ == "__main__":
    main()
