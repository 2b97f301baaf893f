"""serving.torchserve's configuration logic and the shipped config.properties (no TorchServe needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.registry import served_model_names
from serving.torchserve import DEFAULT_CONFIG, DEFAULT_PORTS, ServeError, effective_config, parse_properties, start


def _props(text: str) -> dict[str, str]:
    return dict(parse_properties(text))


def test_shipped_config_is_hardened() -> None:
    p = _props(DEFAULT_CONFIG.read_text())
    for key in ("inference_address", "management_address", "metrics_address"):
        assert p[key].startswith("http://127.0.0.1:"), key
    assert p["grpc_inference_address"] == p["grpc_management_address"] == "127.0.0.1"
    assert p["disable_token_authorization"] == "false"
    # register/delete only for the update loop's promotions: loopback, management key, local archives only
    assert p["enable_model_api"] == "true"
    assert p["enable_envvars_config"] == "false"
    assert p["limit_max_image_pixels"] == "true"
    assert p["metrics_mode"] == "prometheus"
    assert "model_store" in p["allowed_urls"] and "http" not in p["allowed_urls"]
    assert all(u.startswith("^file:///") for u in p["allowed_urls"].split(","))
    assert int(p["default_workers_per_model"]) == 1
    per_model = json.loads(p["models"])
    assert set(per_model) == set(served_model_names())
    for versions in per_model.values():
        (cfg,) = versions.values()
        assert cfg["minWorkers"] == cfg["maxWorkers"] == 1
        assert 1 <= cfg["batchSize"] <= 8 and 0 <= cfg["maxBatchDelay"] <= 50


def test_effective_config_substitutes_ports_store_and_models(tmp_path: Path) -> None:
    (tmp_path / "mobilenetv3_lstm.mar").write_bytes(b"")
    ports = {**DEFAULT_PORTS, "inference": 18000, "management": 18001, "metrics": 18002}
    p = _props(effective_config(DEFAULT_CONFIG, tmp_path, ["mobilenetv3_lstm"], ports))
    assert p["inference_address"] == "http://127.0.0.1:18000"
    assert p["management_address"] == "http://127.0.0.1:18001"
    assert p["model_store"] == str(tmp_path)
    assert p["load_models"] == "mobilenetv3_lstm=mobilenetv3_lstm.mar"
    assert set(json.loads(p["models"])) == {"mobilenetv3_lstm"}
    assert p["disable_token_authorization"] == "false"


def test_start_refuses_an_empty_store(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="no .mar"):
        start(tmp_path, workdir=tmp_path / "w")
    with pytest.raises(ServeError, match="not in"):
        start(tmp_path, models=["xception_bigru"], workdir=tmp_path / "w")


def test_auth_reads_the_key_file_and_sends_nothing_when_token_authorization_is_off(tmp_path: Path) -> None:
    """A TorchServe with token authorization off (the KServe configuration) writes no key file: no header.
    One that has keys must have its key file: a missing one is an error, not an unauthenticated request."""
    from serving.torchserve import KEY_FILE, ServerInfo

    def info(key: str) -> ServerInfo:
        return ServerInfo("http://i", "http://m", "http://x", key, key, 1, str(tmp_path), ("m",), 1.0)

    assert info("").auth() == {}
    with pytest.raises(FileNotFoundError):
        info("k").auth()
    keys = {"inference": {"key": "ik"}, "management": {"key": "mk"}, "API": {"key": "ak"}}
    (tmp_path / KEY_FILE).write_text(json.dumps(keys))
    assert info("").auth() == {"Authorization": "Bearer ik"}  # status() reads no keys: the file counts
    assert info("k").auth("management") == {"Authorization": "Bearer mk"}
