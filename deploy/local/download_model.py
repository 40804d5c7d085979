#!/usr/bin/env python3
"""Finds a Hugging Face model in the local cache, or downloads it, for deploy/local/run.sh.

    download_model.py MODEL_ID

Prints the snapshot directory on stdout (the last line); download progress bars go to
stderr. On failure exits 1 with one message on stderr saying why and what to do: offline
(HF_HUB_OFFLINE or no network), an unknown or gated id, or huggingface_hub missing.
"""
import os
import sys

# Only what the workers read: configuration, tokenizer and weights.
PATTERNS = ["*.json", "*.safetensors", "*.txt"]


def fail(message):
    print(f"run.sh: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 2:
        fail("usage: download_model.py MODEL_ID")
    model = sys.argv[1]
    local_dir_hint = (
        f"Pass --model with a local directory in Hugging Face layout instead (on a machine "
        f"with network: `hf download {model} --local-dir DIR`, then copy DIR here)."
    )
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError,
                                            RepositoryNotFoundError)
    except ImportError:
        fail(f"{model} is not a directory and downloading it needs the huggingface_hub "
             f"package, which is not installed (`.venv/bin/pip install huggingface_hub`). "
             f"{local_dir_hint}")

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not offline:
        print(f"run.sh: downloading {model} from the Hugging Face Hub into the cache "
              f"({os.environ.get('HF_HOME', '~/.cache/huggingface')})", file=sys.stderr)
    try:
        path = snapshot_download(model, allow_patterns=PATTERNS)
    except GatedRepoError:
        fail(f"{model} is gated: accept its terms on huggingface.co and log in "
             f"(`hf auth login` or HF_TOKEN). {local_dir_hint}")
    except RepositoryNotFoundError:
        fail(f"no model {model} on the Hugging Face Hub (or it is private: log in with "
             f"`hf auth login` or HF_TOKEN). Check the id, or pass a local directory.")
    except LocalEntryNotFoundError as error:
        if offline:
            fail(f"{model} is not in the Hugging Face cache and HF_HUB_OFFLINE is set, so it "
                 f"cannot be downloaded. Unset HF_HUB_OFFLINE where there is network. "
                 f"{local_dir_hint}")
        cause = str(error).splitlines()[0]
        fail(f"{model} is not in the Hugging Face cache and the Hub cannot be reached "
             f"({cause}). Offline? {local_dir_hint}")
    except Exception as error:  # permissions, full disk, an interrupted download
        fail(f"cannot download {model}: {type(error).__name__}: {error}")
    print(path)


if __name__ == "__main__":
    main()
