#!/usr/bin/env python3
"""Reference throughput for `gpu-worker bench`: PyTorch + transformers, bf16, SDPA attention.

Runs the same kind of synthetic batch as `gpu-worker bench --batch B --seq-len L` (random
token ids, last-token pooling, L2 normalization) on a Hugging Face model directory and prints
one JSON line per configuration with tokens_per_s. Sequences of a batch have length L by
default, so no token is padding and the numbers compare directly; with --min-len-fraction F
they are drawn from [F*L, L] and left-padded to L with an attention mask, as a transformers
server batches them, and tokens_per_s counts real tokens only.

Needs torch with CUDA and transformers (the GPU machine's image has both).
"""
import argparse
import json

import torch
from transformers import AutoModel

# Qwen3's <|endoftext|>, its padding token.
PAD_ID = 151643


def load(model_dir):
    kwargs = dict(attn_implementation="sdpa")
    try:  # transformers >= 5 names the argument dtype, 4.x torch_dtype
        model = AutoModel.from_pretrained(model_dir, dtype=torch.bfloat16, **kwargs)
    except TypeError:
        model = AutoModel.from_pretrained(model_dir, torch_dtype=torch.bfloat16, **kwargs)
    return model.cuda().eval()


def batch(batch_size, seq_len, min_len_fraction, generator):
    ids = torch.randint(0, 150_000, (batch_size, seq_len), generator=generator)
    low = max(1, int(seq_len * min_len_fraction))
    lengths = torch.randint(low, seq_len + 1, (batch_size,), generator=generator)
    if min_len_fraction >= 1.0:
        lengths.fill_(seq_len)
    mask = torch.zeros(batch_size, seq_len, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        mask[row, seq_len - length:] = 1
        ids[row, : seq_len - length] = PAD_ID
    return ids.cuda(), mask.cuda()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory (Hugging Face layout)")
    parser.add_argument("--config", action="append", required=True, help="BATCHxSEQ_LEN, e.g. 32x512; repeatable")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations after one warm-up")
    parser.add_argument("--min-len-fraction", type=float, default=1.0,
                        help="draw lengths from [F*L, L] and left-pad (default 1.0: no padding)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = load(args.model)
    generator = torch.Generator().manual_seed(args.seed)
    for config in args.config:
        batch_size, seq_len = (int(v) for v in config.split("x"))
        ids, mask = batch(batch_size, seq_len, args.min_len_fraction, generator)

        @torch.inference_mode()
        def embed():
            last = model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
            return torch.nn.functional.normalize(last.float(), dim=-1)

        embed()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.iters):
            embed()
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / args.iters
        print(json.dumps({
            "backend": "torch-sdpa-bf16",
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(),
            "batch": batch_size,
            "seq_len": seq_len,
            "iters": args.iters,
            "ms_per_batch": ms,
            "tokens_per_s": int(mask.sum()) / (ms / 1e3),
            "padded_tokens_per_s": batch_size * seq_len / (ms / 1e3),
        }), flush=True)


if __name__ == "__main__":
    main()
