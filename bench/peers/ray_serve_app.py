#!/usr/bin/env python3
"""The seed's stack, rebuilt as a benchmark peer: a Ray Serve deployment with a FastAPI
ingress around sentence-transformers, with the seed's API and its dev settings.

  POST /api/v1/embedding/api  {"input": [texts] | "text", "is_query": bool} -> [[float]]
       queries are embedded as "Instruct: {task}\\nQuery:{text}" (the default task of
       Qwen3-Embedding), documents as they are; vectors are last-token pooled and
       L2-normalized (the model directory's sentence-transformers modules say so)
  GET  /health                 200 once the replica has loaded the model
  GET  /debug                  model, device, settings, cache statistics, versions

Settings as the seed has them: replicas share the GPUs by fraction (num_gpus per replica),
at most 100 queries in flight per replica (max_concurrent_queries, called
max_ongoing_requests in current Ray), a request timeout, an LRU cache of vectors keyed by
(is_query, text); the dev profile runs one replica. Without a GPU the replica runs on the
CPU and is given all CPUs (Ray would otherwise pin torch to one thread).

The model directory must be in the published Qwen3-Embedding layout (modules.json with
last-token pooling and normalization): bench/peers/st_layout.py writes one from a bare
checkpoint.

    python bench/peers/ray_serve_app.py --model DIR --port 8000 [--profile dev|production]
        [--request-timeout-s S] [--cpus N]
"""
import argparse
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"
PROFILES = {
    # replicas, GPU fraction per replica, in-flight cap per replica, timeout, cache entries
    "dev": {"replicas": 1, "gpu_fraction": 1.0, "max_concurrent_queries": 100, "timeout_s": 60.0, "cache_size": 10000},
    "production": {"replicas": 2, "gpu_fraction": 0.5, "max_concurrent_queries": 100, "timeout_s": 30.0, "cache_size": 10000},
}


def build_app(model_dir, settings, cpus_per_replica, gpus_per_replica):
    """The Ray Serve application (imports Ray lazily so --help is quick)."""
    import torch
    from fastapi import Body, FastAPI, HTTPException
    from ray import serve

    api = FastAPI(title="qwen3-embedding (Ray Serve peer)")

    @serve.deployment(
        num_replicas=settings["replicas"],
        max_ongoing_requests=settings["max_concurrent_queries"],
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
    )
    @serve.ingress(api)
    class Embedder:
        def __init__(self):
            from sentence_transformers import SentenceTransformer

            if not (Path(model_dir) / "modules.json").is_file():
                raise RuntimeError(
                    f"{model_dir} has no modules.json: write the published layout first "
                    "(bench/peers/st_layout.py)"
                )
            self.device = "cuda" if torch.cuda.is_available() and gpus_per_replica > 0 else "cpu"
            torch.set_num_threads(max(1, int(cpus_per_replica)))
            self.model = SentenceTransformer(model_dir, device=self.device, model_kwargs={"dtype": torch.float32})
            self.query_prompt = f"Instruct: {DEFAULT_TASK}\nQuery:"
            self.cache = OrderedDict()
            self.cache_lock = threading.Lock()
            self.hits = 0
            self.misses = 0
            self.started = time.time()

        def _cached(self, keys):
            with self.cache_lock:
                found = {}
                for key in keys:
                    if key in self.cache:
                        self.cache.move_to_end(key)
                        found[key] = self.cache[key]
                self.hits += len(found)
                self.misses += len(keys) - len(found)
                return found

        def _remember(self, items):
            with self.cache_lock:
                for key, vector in items:
                    self.cache[key] = vector
                    self.cache.move_to_end(key)
                while len(self.cache) > settings["cache_size"]:
                    self.cache.popitem(last=False)

        @api.post("/api/v1/embedding/api")
        def embed(self, input: list[str] | str = Body(...), is_query: bool = Body(False)):
            texts = [input] if isinstance(input, str) else input
            if not texts:
                raise HTTPException(status_code=422, detail="input is empty")
            keys = [(is_query, text) for text in texts]
            found = self._cached(keys)
            missing = list(dict.fromkeys(key for key in keys if key not in found))
            if missing:
                vectors = self.model.encode(
                    [text for _, text in missing],
                    prompt=self.query_prompt if is_query else None,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                )
                fresh = [(key, vector.tolist()) for key, vector in zip(missing, vectors)]
                self._remember(fresh)
                found.update(fresh)
            return [found[key] for key in keys]

        @api.get("/health")
        def health(self):
            return {"status": "ok"}

        @api.get("/debug")
        def debug(self):
            import ray
            import sentence_transformers
            import transformers

            with self.cache_lock:
                cache = {"entries": len(self.cache), "capacity": settings["cache_size"], "hits": self.hits, "misses": self.misses}
            return {
                "model_dir": model_dir,
                "device": self.device,
                "torch_threads": torch.get_num_threads(),
                "settings": settings,
                "cache": cache,
                "uptime_s": time.time() - self.started,
                "max_seq_length": self.model.max_seq_length,
                "versions": {
                    "ray": ray.__version__,
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "sentence_transformers": sentence_transformers.__version__,
                },
            }

    return Embedder.bind()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory (published Qwen3-Embedding layout)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="dev")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs Ray may use (default: all)")
    parser.add_argument("--request-timeout-s", type=float, help="HTTP request timeout (default: the profile's)")
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    settings = dict(PROFILES[args.profile])
    if args.request_timeout_s:
        settings["timeout_s"] = args.request_timeout_s
    gpus = torch.cuda.device_count()
    cpus_per_replica = max(1, args.cpus // settings["replicas"])
    gpus_per_replica = settings["gpu_fraction"] if gpus else 0
    model_dir = str(Path(args.model).resolve())

    # A private local cluster: its own temp dir, no dashboard, a small object store (only
    # requests and vectors pass through it). ray.shutdown() stops every process it started.
    ray_dir = tempfile.mkdtemp(prefix="ray-peer-")
    ray.init(
        num_cpus=args.cpus,
        num_gpus=gpus,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        _temp_dir=ray_dir,
        log_to_driver=False,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port, "request_timeout_s": settings["timeout_s"]})
        serve.run(build_app(model_dir, settings, cpus_per_replica, gpus_per_replica), name="embedding", route_prefix="/")
        print(f"ray_serve_app: ready at http://{args.host}:{args.port} ({args.profile} profile, {settings['replicas']} replica(s))", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
