"""bench/scale.py: the containers' entry points as local processes, 2 of each, behind nginx.

The slow test starts the scale benchmark's stack with two web instances (gunicorn with
portal/gunicorn.conf.py), two job clusters (``manage.py qcluster``), TorchServe with two workers per
model (one cheap model, to stay within about a minute), a private MariaDB and nginx with the rendered
docker/nginx.conf, and sends one upload end to end through the proxy. The others check the rendered
configuration files against the ones the containers use.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bench.scale import Config, render_nginx_config, render_torchserve_config, run_config
from serving.torchserve import DEFAULT_CONFIG, parse_properties
from tests.conftest import DATA_ALL4

REPO = Path(__file__).resolve().parent.parent.parent
CHEAP = "mobilenetv3_lstm"


def test_nginx_config_is_the_containers_with_an_upstream() -> None:
    template = (REPO / "docker" / "nginx.conf").read_text()
    prefix = Path("/srv/bench")
    text = render_nginx_config(
        template, prefix, 9001, [9101, 9102], 9002, "http://127.0.0.1:9200", prefix / "c", prefix / "k"
    )
    assert re.search(r"upstream portal_web \{\s*server 127\.0\.0\.1:9101;\s*server 127\.0\.0\.1:9102;\s*\}", text)
    assert "proxy_pass http://portal_web;" in text and "proxy_pass http://127.0.0.1:8000" not in text
    assert text.count("proxy_pass http://127.0.0.1:9200;") == 2
    assert "listen 127.0.0.1:9001 ssl;" in text and "listen 127.0.0.1:9002 ssl;" in text
    assert "/tmp/" not in text and "/run/secrets" not in text
    assert "pid /srv/bench/nginx.pid;" in text and "ssl_certificate     /srv/bench/c;" in text
    # everything else stays as the container has it
    for line in ("client_max_body_size 520m;", "ssl_protocols TLSv1.2 TLSv1.3;", "X-Forwarded-Proto https;"):
        assert line in text
    with pytest.raises(ValueError, match="listen 8443"):
        render_nginx_config(
            template.replace("listen 8443 ssl;", "listen 8444 ssl;"), prefix, 1, [2], 3, "x", prefix, prefix
        )


def test_torchserve_config_overrides_only_the_worker_counts(tmp_path: Path) -> None:
    out = render_torchserve_config(DEFAULT_CONFIG, 2, tmp_path / "c.properties")
    base, rendered = dict(parse_properties(DEFAULT_CONFIG.read_text())), dict(parse_properties(out.read_text()))
    assert rendered["default_workers_per_model"] == "2"
    models = json.loads(rendered["models"])
    assert set(models) == set(json.loads(base["models"]))
    for versions in models.values():
        for settings in versions.values():
            assert settings["minWorkers"] == settings["maxWorkers"] == 2
    changed = {k for k in base if base[k] != rendered[k]}
    assert changed == {"default_workers_per_model", "models"}


@pytest.mark.integration
@pytest.mark.slow
def test_two_of_each_behind_nginx_serve_an_upload_end_to_end(model_store: Path, tmp_path: Path) -> None:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.fail("nginx is not installed: requirements/system-deps.sh installs it (make setup)")
    frames = sorted((DATA_ALL4 / "original").rglob("*.jpg"))[:4]
    assert frames, f"no smear frames under {DATA_ALL4}"
    run = run_config(
        Config(web=2, jobs=2, ts_workers=2),
        tmp_path,
        model_store,
        frames,
        clients=1,
        requests_per_client=1,
        images=1,
        think_s=0.0,
        models=[CHEAP],
        job_workers=2,
        web_processes=1,
    )
    assert run["uploads_accepted"] == 1 and run["errors"] == {}
    assert run["analyses"] == {"done": 1} and run["not_final"] == 0
    assert run["files_rows_consistent"] and run["tracebacks"] == 0
    assert run["result_p50_s"] is not None and run["images_per_s"] > 0
    procs = run["processes"]
    assert procs[f"model worker: {CHEAP}"]["processes"] == 2
    assert procs["web (gunicorn master)"]["processes"] == 2 and procs["web (gunicorn worker)"]["processes"] == 2
    assert procs["job worker (qcluster)"]["processes"] >= 2 * (2 + 1)  # each cluster: its workers + its own
    assert procs["TorchServe frontend (JVM)"]["processes"] == 1 and procs["MariaDB"]["processes"] == 1
    # nginx proxied the upload; its round robin gave both web instances API requests
    var = tmp_path / "w2-j2-t2-portal"
    assert '"POST /api/analyses/' in (var / "proxy.log").read_text()
    for i in (0, 1):
        assert '"POST /api/' in (var / f"web{i}.log").read_text(), f"web{i} got no API request"


def test_torchserve_config_variants_change_only_the_batched_models(tmp_path: Path) -> None:
    """bench.ts_config's variants: workers for every model, batch and delay only for the batched frame models."""
    out = render_torchserve_config(DEFAULT_CONFIG, 2, tmp_path / "c.properties", batch=8, delay_ms=10)
    props = dict(parse_properties(out.read_text()))
    models = {name: next(iter(v.values())) for name, v in json.loads(props["models"]).items()}
    base = {
        name: next(iter(v.values()))
        for name, v in json.loads(dict(parse_properties(DEFAULT_CONFIG.read_text()))["models"]).items()
    }
    assert set(models) == set(base)
    for name, settings in models.items():
        assert settings["minWorkers"] == settings["maxWorkers"] == 2
        if base[name]["batchSize"] > 1:
            assert (settings["batchSize"], settings["maxBatchDelay"]) == (8, 10)
        else:  # wbc_cells answers one frame a call
            assert (settings["batchSize"], settings["maxBatchDelay"]) == (1, base[name]["maxBatchDelay"])
    assert {k: v for k, v in props.items() if k not in ("models", "default_workers_per_model")} == {
        k: v
        for k, v in parse_properties(DEFAULT_CONFIG.read_text())
        if k not in ("models", "default_workers_per_model")
    }
