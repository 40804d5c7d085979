#!/usr/bin/env python3
"""A Hugging Face Hub on loopback for the download tests: serves one model repository from a
local directory with the Hub's API (the repository's file list) and its file downloads
(range requests, the headers huggingface_hub and hf-hub read).

    fake_hub.py REPO_ID DIR COMMIT

Prints its port on stdout, then serves until killed.
"""
import hashlib
import json
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

repo_id, root, commit = sys.argv[1], sys.argv[2], sys.argv[3]
files = sorted(name for name in os.listdir(root) if os.path.isfile(os.path.join(root, name)))


class Hub(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, status, body, headers=()):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == f"/api/models/{repo_id}/revision/main":
            info = {"sha": commit, "siblings": [{"rfilename": name} for name in files]}
            return self.send(200, json.dumps(info).encode(), [("Content-Type", "application/json")])
        match = re.fullmatch(f"/{re.escape(repo_id)}/resolve/main/(.+)", self.path)
        if not match or match.group(1) not in files:
            return self.send(404, b"not found")
        with open(os.path.join(root, match.group(1)), "rb") as f:
            data = f.read()
        headers = [("ETag", f'"{hashlib.sha256(data).hexdigest()}"'), ("X-Repo-Commit", commit)]
        ranged = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if not ranged:
            return self.send(200, data, headers)
        start, stop = int(ranged.group(1)), min(int(ranged.group(2)), len(data) - 1)
        headers.append(("Content-Range", f"bytes {start}-{stop}/{len(data)}"))
        return self.send(206, data[start:stop + 1], headers)


server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
print(server.server_address[1], flush=True)
server.serve_forever()
