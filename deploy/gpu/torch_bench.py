#!/usr/bin/env python3
"""Reference throughput for `gpu-worker bench`: PyTorch + transformers, bf16, SDPA attention.

Runs the same kind of synthetic batch as `gpu-worker bench --batch B --seq-len L` (random
token ids, last-token pooling, L2 normalization) on a Hugging Face model directory and prints
one JSON line per configuration with tokens_per_s. Sequences of a batch have length L by
default, so no token is padding and the numbers compare directly; with --min-len-fraction F
they are drawn from [F*L, L] and left-padded to L with an attention mask, as a transformers
server batches them, and tokens_per_s counts real tokens only.

With --mixed N:MIN:MAX it runs the mixed workload of `gpu-worker bench --sequences N --min-len
MIN --seq-len MAX`: the same N lengths (the same generator and seed), batched as
sentence-transformers' encode() batches them: sorted longest first, --batch-size sequences a
batch, each left-padded to its longest.

With --compile it runs PyTorch's strongest configuration that needs no network instead (rows
named torch-compile-bf16): the model through torch.compile, with mode="reduce-overhead" (CUDA
graphs, one per shape) for the fixed batches, and for --mixed the sequences sorted longest
first and batched by a padded-token budget (--budget-tokens, as a length-aware server batches)
through a compilation with dynamic shapes. Compiling happens in the untimed warm-up.

Needs torch with CUDA and transformers (the GPU machine's image has both); --device cpu runs
the same code on the CPU, to check the script where there is no GPU.
"""
import argparse
import itertools
import json
import time

import torch
from transformers import AutoModel

# Qwen3's <|endoftext|>, its padding token.
PAD_ID = 151643


def load(model_dir, device):
    kwargs = dict(attn_implementation="sdpa")
    try:  # transformers >= 5 names the argument dtype, 4.x torch_dtype
        model = AutoModel.from_pretrained(model_dir, dtype=torch.bfloat16, **kwargs)
    except TypeError:
        model = AutoModel.from_pretrained(model_dir, torch_dtype=torch.bfloat16, **kwargs)
    return model.to(device).eval()


def batch(batch_size, seq_len, min_len_fraction, generator, device):
    ids = torch.randint(0, 150_000, (batch_size, seq_len), generator=generator)
    low = max(1, int(seq_len * min_len_fraction))
    lengths = torch.randint(low, seq_len + 1, (batch_size,), generator=generator)
    if min_len_fraction >= 1.0:
        lengths.fill_(seq_len)
    mask = torch.zeros(batch_size, seq_len, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        mask[row, seq_len - length:] = 1
        ids[row, : seq_len - length] = PAD_ID
    return ids.to(device), mask.to(device)


MASK64 = (1 << 64) - 1


def lcg_lengths(seed, count, low, high):
    """The first `count` sequence lengths `gpu-worker bench` draws (its bench::Lcg)."""
    state = (seed * 6364136223846793005 + 1442695040888963407) & MASK64
    lengths = []
    for _ in range(count):
        state = (state * 6364136223846793005 + 1442695040888963407) & MASK64
        lengths.append(low + (state >> 33) % (high - low + 1))
    return lengths


def timed(embed, iters, device, warmups=1):
    """Milliseconds per call of `embed`, after `warmups` untimed calls."""
    for _ in range(warmups):
        embed()
    if device == "cpu":
        start = time.perf_counter()
        for _ in range(iters):
            embed()
        return (time.perf_counter() - start) * 1e3 / iters
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        embed()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def device_name(device):
    return "cpu" if device == "cpu" else torch.cuda.get_device_name()


def by_count(lengths, batch_size):
    """sentence-transformers' batches of lengths sorted longest first: batch_size at a time."""
    return [lengths[first:first + batch_size] for first in range(0, len(lengths), batch_size)]


def by_budget(lengths, budget):
    """Batches of lengths sorted longest first holding at most `budget` tokens once padded to
    their first (longest) length, one sequence at least."""
    batches, first = [], 0
    while first < len(lengths):
        count = max(1, budget // lengths[first])
        batches.append(lengths[first:first + count])
        first += count
    return batches


def mixed(model, spec, batching, batching_fields, iters, seed, generator, device, backend):
    count, low, high = (int(v) for v in spec.split(":"))
    lengths = sorted(lcg_lengths(seed, count, low, high), reverse=True)
    batches = []
    for rows in batching(lengths):
        width = rows[0]
        ids = torch.randint(0, 150_000, (len(rows), width), generator=generator)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for row, length in enumerate(rows):
            mask[row, width - length:] = 1
            ids[row, : width - length] = PAD_ID
        batches.append((ids.to(device), mask.to(device)))

    @torch.inference_mode()
    def embed():
        for ids, mask in batches:
            last = model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
            torch.nn.functional.normalize(last.float(), dim=-1)

    ms = timed(embed, iters, device)
    tokens = sum(lengths)
    padded = sum(int(mask.numel()) for _, mask in batches)
    print(json.dumps({
        "backend": backend,
        "torch": torch.__version__,
        "device": device_name(device),
        "workload": "mixed",
        "sequences": count,
        "min_len": low,
        "seq_len": high,
        **batching_fields,
        "batches": len(batches),
        "tokens": tokens,
        "padded_tokens": padded,
        "iters": iters,
        "ms_per_pass": ms,
        "tokens_per_s": tokens / (ms / 1e3),
    }), flush=True)


def peak(n=8192, iters=20):
    """bf16 matrix product throughput through cuBLAS on random inputs, rotating 3 input sets."""
    pairs = itertools.cycle([(torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
                              torch.randn(n, n, device="cuda", dtype=torch.bfloat16)) for _ in range(3)])

    def product():
        a, b = next(pairs)
        torch.matmul(a, b)

    ms = timed(product, iters)
    print(json.dumps({"peak_bf16_tflops": 2 * n**3 / (ms / 1e3) / 1e12, "n": n}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory (Hugging Face layout)")
    parser.add_argument("--config", action="append", default=[], help="BATCHxSEQ_LEN, e.g. 32x512; repeatable")
    parser.add_argument("--mixed", action="append", default=[],
                        help="SEQUENCES:MIN:MAX, the mixed workload; repeatable")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per batch of --mixed")
    parser.add_argument("--compile", action="store_true",
                        help="PyTorch's strongest: torch.compile, and --mixed batched by --budget-tokens")
    parser.add_argument("--budget-tokens", type=int, default=32_768,
                        help="padded tokens per batch of --mixed with --compile")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to check the script")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations after one warm-up")
    parser.add_argument("--min-len-fraction", type=float, default=1.0,
                        help="draw lengths from [F*L, L] and left-pad (default 1.0: no padding)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak", action="store_true",
                        help="first time a large bf16 matrix product (the card's GEMM ceiling)")
    args = parser.parse_args()

    if args.peak:
        peak()
    model = load(args.model, args.device)
    backend = "torch-compile-bf16" if args.compile else "torch-sdpa-bf16"
    # reduce-overhead records a CUDA graph per shape; its trees need a few calls to record.
    fixed = torch.compile(model, mode="reduce-overhead") if args.compile else model
    warmups = 3 if args.compile else 1
    generator = torch.Generator().manual_seed(args.seed)
    for config in args.config:
        batch_size, seq_len = (int(v) for v in config.split("x"))
        ids, mask = batch(batch_size, seq_len, args.min_len_fraction, generator, args.device)

        @torch.inference_mode()
        def embed():
            last = fixed(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
            return torch.nn.functional.normalize(last.float(), dim=-1)

        # Small batches take milliseconds: repeat them for at least 65,536 tokens (at most 200 times).
        iters = max(args.iters, min(200, 65_536 // (batch_size * seq_len)))
        ms = timed(embed, iters, args.device, warmups)
        print(json.dumps({
            "backend": backend,
            "torch": torch.__version__,
            "device": device_name(args.device),
            "batch": batch_size,
            "seq_len": seq_len,
            "iters": iters,
            "ms_per_batch": ms,
            "tokens_per_s": int(mask.sum()) / (ms / 1e3),
            "padded_tokens_per_s": batch_size * seq_len / (ms / 1e3),
        }), flush=True)
    if args.compile:
        bulk = torch.compile(model, dynamic=True)
        batching = lambda lengths: by_budget(lengths, args.budget_tokens)  # noqa: E731
        batching_fields = {"budget_tokens": args.budget_tokens}
    else:
        bulk = model
        batching = lambda lengths: by_count(lengths, args.batch_size)  # noqa: E731
        batching_fields = {"batch_size": args.batch_size}
    for spec in args.mixed:
        mixed(bulk, spec, batching, batching_fields, args.iters, args.seed, generator, args.device,
              backend)


if __name__ == "__main__":
    main()
