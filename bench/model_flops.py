"""Floating-point operations per token of a Qwen3 model, a multiply and an add counted apart.

Shared by bench/cpu_forward.sh (against the CPU's bf16 ceiling) and deploy/gpu/check.sh
(against the card's matrix ceiling; prepare.sh copies this file into the GPU bundle).
"""
import json


def load_config(path):
    """The model's config.json."""
    with open(path) as f:
        return json.load(f)


def head_dim(config):
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def linear_flops(config):
    """The linear layers' operations per token: q|k|v, o, gate|up and down, every layer."""
    h, i = config["hidden_size"], config["intermediate_size"]
    q = config["num_attention_heads"] * head_dim(config)
    kv = config["num_key_value_heads"] * head_dim(config)
    return 2 * config["num_hidden_layers"] * (h * (q + 2 * kv) + q * h + 3 * h * i)


def attention_flops(config, seq_len):
    """Causal attention's operations per token of a seq_len-token sequence (QK^T and PV)."""
    return 2 * config["num_attention_heads"] * head_dim(config) * (seq_len + 1) * config["num_hidden_layers"]
