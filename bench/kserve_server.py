"""KServe's model server in front of a real TorchServe, as a KServe predictor pod runs them, for the
tests and the benchmark (KServe itself needs a cluster; its model server runs anywhere).

- :func:`torchserve_config`: the shipped TorchServe configuration with the settings the KServe layout
  changes (docker/kserve_layout.py: token authorization off, access control being the cluster's);
- :func:`start_model_server`: KServe's own ``kserve.ModelServer`` (kserve 0.21.0 in ``.venv-kserve``,
  ``make kserve-env``) forwarding the Open Inference Protocol (v2) to that TorchServe
  (bench/kserve_proxy.py), started and waited for until ready. (This module is not named ``kserve``:
  the proxy runs from this directory and imports the ``kserve`` package.)
- :func:`start_predictor`: the project's own KServe predictor (kserve_predictor/: KServe's model server
  running the frame and cell runtimes, no TorchServe) in the same environment, started and waited for.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import requests

__all__ = ["KSERVE_PYTHON", "load_script", "torchserve_config", "start_model_server", "start_predictor"]

REPO = Path(__file__).resolve().parent.parent
#: KServe's model server, in its own environment (make kserve-env)
KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"
PROXY = Path(__file__).resolve().parent / "kserve_proxy.py"


def load_script(name: str, path: Path) -> ModuleType:
    """A script that is not in a package (docker/*.py) imported by its path, as ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def torchserve_config(path: Path) -> Path:
    """Write the shipped config.properties with the KServe layout's overrides to ``path``; return it."""
    from serving.torchserve import DEFAULT_CONFIG, parse_properties

    layout = load_script("deploy_kserve_layout", REPO / "docker" / "kserve_layout.py")
    props = dict(parse_properties(DEFAULT_CONFIG.read_text()))
    props["disable_token_authorization"] = layout.OVERRIDES["disable_token_authorization"]
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return path


def start_model_server(
    predictor_url: str, models: Sequence[str], port: int, log_path: Path, timeout_s: float = 60.0
) -> tuple[str, subprocess.Popen[bytes]]:
    """KServe's model server on ``port`` forwarding v2 for ``models`` to the TorchServe at
    ``predictor_url``; returns its base URL, once ``/v2/health/ready`` answers 200, and its process.
    Raises RuntimeError (with the end of its log) when it does not start."""
    env = {
        "KSERVE_HTTP_PORT": str(port),
        "KSERVE_PREDICTOR": predictor_url.removeprefix("http://"),
        "KSERVE_MODELS": ",".join(models),
        "PATH": "/usr/bin:/bin",
    }
    return _start_ready([str(KSERVE_PYTHON), str(PROXY)], env, port, log_path, timeout_s, "KServe's model server")


def start_predictor(
    model_dir: Path,
    models: Sequence[str],
    port: int,
    log_path: Path,
    timeout_s: float = 180.0,
    extra_env: dict[str, str] | None = None,
) -> tuple[str, subprocess.Popen[bytes]]:
    """The project's KServe predictor (``python -m kserve_predictor``) on ``port`` serving ``models`` from
    the archives in ``model_dir`` (a model store or a KServe storage layout), one torch thread as the
    TorchServe workers; returns its base URL, once ``/v2/health/ready`` answers 200 (every model loaded),
    and its process. Raises RuntimeError (with the end of its log) when it does not start."""
    env = {
        "PYTHONPATH": str(REPO),
        "PATH": "/usr/bin:/bin",
        "LEUKEMIA_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    cmd = [str(KSERVE_PYTHON), "-m", "kserve_predictor", "--model_dir", str(model_dir)]
    cmd += ["--models", ",".join(models), "--http_port", str(port)]
    return _start_ready(cmd, env, port, log_path, timeout_s, "the KServe predictor")


def _start_ready(
    cmd: list[str], env: dict[str, str], port: int, log_path: Path, timeout_s: float, what: str
) -> tuple[str, subprocess.Popen[bytes]]:
    if not KSERVE_PYTHON.is_file():
        raise RuntimeError(f"{KSERVE_PYTHON} not found: run `make kserve-env`")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return url, proc
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            raise RuntimeError(f"{what} did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.25)
