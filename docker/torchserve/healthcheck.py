"""Container health check for TorchServe: GET /ping on the loopback inference port with the inference key.

Stdlib only. TorchServe 0.12's token authorization covers /ping, so the key is read from key_file.json
in the working directory (TS_WORKDIR, default /srv/leukemia/run). Exit 0 when /ping answers 200
(TorchServe says "Healthy" once the frontend is up; model readiness is logged at start).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path


def main() -> int:
    workdir = Path(os.environ.get("TS_WORKDIR", "/srv/leukemia/run"))
    url = os.environ.get("TS_PING_URL", "http://127.0.0.1:8080/ping")
    try:
        key = json.loads((workdir / "key_file.json").read_text())["inference"]["key"]
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=4) as resp:  # noqa: S310 (fixed loopback URL)
            return 0 if resp.status == 200 else 1
    except (OSError, KeyError, ValueError) as exc:
        print(f"ping: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
