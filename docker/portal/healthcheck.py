"""Container health check for the portal web process: GET /healthz as the TLS proxy would send it.

Stdlib only. The port comes from PORTAL_BIND (gunicorn's bind address), the Host header from the first
DJANGO_ALLOWED_HOSTS entry, and X-Forwarded-Proto is https, so the production settings (allowed hosts,
SSL redirect behind a proxy) answer the probe as they answer real traffic. Exit 0 on HTTP 200.
"""

from __future__ import annotations

import http.client
import os
import sys


def main() -> int:
    bind = os.environ.get("PORTAL_BIND", "127.0.0.1:8000")
    port = int(bind.rpartition(":")[2] or 8000)
    hosts = [h.strip().lstrip(".") for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h.strip()]
    host = next((h for h in hosts if h != "*"), "localhost")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=4)
    try:
        conn.request("GET", "/healthz", headers={"Host": host, "X-Forwarded-Proto": "https"})
        status = conn.getresponse().status
    except OSError as exc:
        print(f"healthz: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if status != 200:
        print(f"healthz: HTTP {status}", file=sys.stderr)
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
