#!/usr/bin/env python3
"""Writes a Qwen3-Embedding model directory in the layout the published checkpoints have,
from a bare one (the qwen3-tiny fixture, or make-random-qwen3.py's output), so that every
system of the benchmark serves the same directory with its defaults:

  - the weights and tokenizer.json, linked (not copied)
  - config.json in the published (transformers 4.x) layout: top-level rope_theta and
    torch_dtype, rope_scaling null (transformers 4.x reads no rope_parameters and would
    silently fall back to rope_theta 10000)
  - tokenizer_config.json (pad = <|endoftext|>, left padding) when the source has none
  - the sentence-transformers files: modules.json (Transformer -> last-token Pooling ->
    Normalize), 1_Pooling/config.json, sentence_bert_config.json (max_seq_length 8192),
    config_sentence_transformers.json (the query prompt with the default task)

    bench/peers/st_layout.py SRC_DIR OUT_DIR
"""
import json
import shutil
import sys
from pathlib import Path

DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"
WRITTEN = {"config.json", "tokenizer_config.json", "modules.json", "sentence_bert_config.json",
           "config_sentence_transformers.json", "1_Pooling", "2_Normalize"}


def legacy_config(config):
    """config.json as transformers 4.x wrote it for Qwen3-Embedding."""
    config = dict(config)
    rope = config.pop("rope_parameters", None) or {}
    config.setdefault("rope_theta", rope.get("rope_theta", 1000000))
    config.setdefault("rope_scaling", None)
    dtype = config.pop("dtype", None)
    config.setdefault("torch_dtype", dtype or "bfloat16")
    config.pop("layer_types", None)
    return config


def write_json(path, value):
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def main():
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    src, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    config = json.loads((src / "config.json").read_text())
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    for item in src.iterdir():
        if item.name in WRITTEN or item.name in ("golden.json", "README.md") or item.name.startswith("."):
            continue
        (out / item.name).symlink_to(item)
    write_json(out / "config.json", legacy_config(config))
    if (src / "tokenizer_config.json").is_file():
        shutil.copyfile(src / "tokenizer_config.json", out / "tokenizer_config.json")
    else:
        write_json(out / "tokenizer_config.json", {
            "tokenizer_class": "Qwen2Tokenizer",
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "padding_side": "left",
            "model_max_length": 131072,
            "clean_up_tokenization_spaces": False,
            "split_special_tokens": False,
        })
    write_json(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    (out / "1_Pooling").mkdir()
    write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": config["hidden_size"],
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": True,
        "include_prompt": True,
    })
    (out / "2_Normalize").mkdir()
    write_json(out / "sentence_bert_config.json", {"max_seq_length": 8192, "do_lower_case": False})
    write_json(out / "config_sentence_transformers.json", {
        "prompts": {"query": f"Instruct: {DEFAULT_TASK}\nQuery:", "document": ""},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })
    print(f"st_layout.py: {out} (published layout of {src})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
