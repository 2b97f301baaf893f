"""Start and stop a local TorchServe serving the model store, and read its access keys.

Used by ``make serve`` / ``make stop`` (:mod:`serving.cli`), the integration tests, the benchmark and the portal::

    from serving.torchserve import start, stop, read_keys
    info = start("model_store")            # returns when every model answers ready (<= 120 s)
    requests.post(f"{info.inference_url}/predictions/xception_bigru", data=jpeg_bytes,
                  headers={"Authorization": f"Bearer {info.inference_key}",
                           "Content-Type": "application/octet-stream"})
    stop(workdir=info.workdir)

Keys: TorchServe 0.12 enforces token authorization and, at start, writes ``key_file.json`` into its
working directory (here ``<workdir>/key_file.json``, mode 600) with three keys: ``inference`` (for
``/predictions``, ``/explanations``, ``/ping``), ``management`` (for the management API) and ``API``
(to rotate the other two via ``<management>/token?type=inference``). Inference and management
keys expire after ``token_expiration_min`` (config.properties); TorchServe then answers HTTP 400
``InvalidKeyException`` (not 401): clients should re-read the file (:func:`read_keys`) and retry once.
:func:`stop` deletes the file.

Each instance is isolated in its ``workdir``: effective ``config.properties``, logs (rotated), the
key file, TorchServe's pid file and temporary directory (so two instances on different ports do
not collide), and ``server.json`` (:class:`ServerInfo`, without keys).

Processes: TorchServe (its Python launcher, the JVM and the JVM's model workers) runs in a process group
of its own, recorded in ``<workdir>/torchserve.pgid`` the moment it is spawned, so that :func:`stop`
(``make stop``) finds it while it is still starting (``server.json`` is written only once every model is
ready), and :func:`start` refuses to start a second one over it. A :func:`start` interrupted (SIGTERM,
Ctrl-C, a timeout) stops the group it started. With a :class:`serving.lifeline.Lifeline` (``make run``),
the group also dies with the process that started it, even when that one is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from serving.lifeline import Lifeline, die_with_parent, group_alive, kill_groups, pid_alive

__all__ = [
    "REPO",
    "DEFAULT_CONFIG",
    "DEFAULT_WORKDIR",
    "DEFAULT_PORTS",
    "Keys",
    "consecutive_ports",
    "free_ports",
    "ServerInfo",
    "ServeError",
    "read_keys",
    "effective_config",
    "parse_properties",
    "start",
    "stop",
    "status",
    "running_group",
]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "docker" / "torchserve" / "config.properties"
LOG_CONFIG = REPO / "docker" / "torchserve" / "log4j2.xml"
DEFAULT_WORKDIR = REPO / ".torchserve"
DEFAULT_PORTS = {
    "inference": 8080,
    "management": 8081,
    "metrics": 8082,
    "grpc_inference": 7070,
    "grpc_management": 7071,
}
KEY_FILE = "key_file.json"
INFO_FILE = "server.json"
PGID_FILE = "torchserve.pgid"


def consecutive_ports(base: int) -> dict[str, int]:
    """The five listeners on ``base``, ``base + 1``, ... (inference, management, metrics, 2x gRPC)."""
    return {name: base + i for i, name in enumerate(DEFAULT_PORTS)}


def free_ports() -> dict[str, int]:
    """Five free loopback ports, so that several instances (tests, benchmarks) never collide."""
    import socket

    socks = []
    for _ in DEFAULT_PORTS:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = {name: s.getsockname()[1] for name, s in zip(DEFAULT_PORTS, socks, strict=True)}
    for s in socks:
        s.close()
    return ports


READY_TIMEOUT_S = 120.0


class ServeError(RuntimeError):
    """TorchServe did not start (the message carries the log tail) or could not be stopped."""


@dataclass(frozen=True)
class Keys:
    inference: str
    management: str
    api: str


@dataclass(frozen=True)
class ServerInfo:
    inference_url: str
    management_url: str
    metrics_url: str
    inference_key: str
    management_key: str
    pid: int
    workdir: str
    models: tuple[str, ...]
    ready_s: float

    @property
    def key_file(self) -> Path:
        return Path(self.workdir) / KEY_FILE

    def auth(self, kind: str = "inference") -> dict[str, str]:
        """The Authorization header for the inference or management API (fresh from the key file); none
        for a TorchServe started with token authorization off (as under KServe), which writes no key file."""
        try:
            keys = read_keys(self.workdir)
        except OSError:
            if self.inference_key:
                raise
            return {}
        return {"Authorization": f"Bearer {keys.inference if kind == 'inference' else keys.management}"}


def read_keys(workdir: str | os.PathLike[str] = DEFAULT_WORKDIR) -> Keys:
    """The current keys from ``<workdir>/key_file.json`` (written by TorchServe at start)."""
    data = json.loads((Path(workdir) / KEY_FILE).read_text())
    return Keys(inference=data["inference"]["key"], management=data["management"]["key"], api=data["API"]["key"])


def parse_properties(text: str) -> list[tuple[str, str]]:
    """Java-properties lines (continuations joined) as (key, raw value) pairs, comments dropped."""
    out: list[tuple[str, str]] = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\") and not stripped.endswith("\\\\"):
            logical += stripped[:-1]
            continue
        logical += stripped
        key, _, value = logical.partition("=")
        out.append((key.strip(), value.strip()))
        logical = ""
    return out


def effective_config(
    base: str | os.PathLike[str],
    model_store: Path,
    models: Sequence[str] | None,
    ports: dict[str, int],
) -> str:
    """``base`` with the model store, the models to load and the ports substituted (still loopback)."""
    props = dict(parse_properties(Path(base).read_text()))
    props["inference_address"] = f"http://127.0.0.1:{ports['inference']}"
    props["management_address"] = f"http://127.0.0.1:{ports['management']}"
    props["metrics_address"] = f"http://127.0.0.1:{ports['metrics']}"
    props["grpc_inference_port"] = str(ports["grpc_inference"])
    props["grpc_management_port"] = str(ports["grpc_management"])
    props["model_store"] = str(model_store)
    props["load_models"] = ",".join(f"{m}={m}.mar" for m in models) if models else "all"
    if "models" in props:  # keep per-model settings only for models in this store
        per_model = json.loads(props["models"])
        present = {p.stem for p in model_store.glob("*.mar")}
        props["models"] = json.dumps({k: v for k, v in per_model.items() if k in present}, separators=(",", ":"))
    lines = [f"# generated by serving.torchserve from {base}"]
    lines += [f"{k}={v}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


def _tail(path: Path, lines: int = 40) -> str:
    if not path.is_file():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path.name} (last {len(text)} lines) ---\n" + "\n".join(text)


def _log_tail(workdir: Path) -> str:
    logs = workdir / "logs"
    return "\n".join(
        t for t in (_tail(workdir / "torchserve.out"), _tail(logs / "ts_log.log"), _tail(logs / "model_log.log")) if t
    )


def _ready_models(info_urls: dict[str, str], keys: Keys, models: Sequence[str]) -> bool:
    headers = {"Authorization": f"Bearer {keys.management}"} if keys.management else {}
    for name in models:
        r = requests.get(f"{info_urls['management']}/models/{name}", headers=headers, timeout=5)
        if r.status_code != 200:
            return False
        workers = r.json()[0].get("workers", [])
        if not workers or any(w.get("status") != "READY" for w in workers):
            return False
    return True


def start(
    model_store: str | os.PathLike[str] = REPO / "model_store",
    models: Sequence[str] | None = None,
    workdir: str | os.PathLike[str] = DEFAULT_WORKDIR,
    config: str | os.PathLike[str] = DEFAULT_CONFIG,
    ports: dict[str, int] | None = None,
    torch_threads: int | None = None,
    timeout_s: float = READY_TIMEOUT_S,
    lifeline: Lifeline | None = None,
) -> ServerInfo:
    """Start TorchServe on every .mar in ``model_store`` (or ``models``); return once all are READY.

    Raises :class:`ServeError` with the log tail if a model is not ready within ``timeout_s``, or if a
    TorchServe started from ``workdir`` still runs (ready or not). With ``lifeline``, TorchServe dies
    with the calling process (see :mod:`serving.lifeline`); without, it outlives it (``make serve``).
    Interrupted (any exception, KeyboardInterrupt included), it stops what it started and re-raises.
    """
    t0 = time.perf_counter()
    store = Path(model_store).resolve()
    work = Path(workdir).resolve()
    names = list(models) if models else sorted(p.stem for p in store.glob("*.mar"))
    if not names:
        raise ServeError(f"no .mar archives in {store} (run `make archive`)")
    missing = [n for n in names if not (store / f"{n}.mar").is_file()]
    if missing:
        raise ServeError(f"not in {store}: {', '.join(m + '.mar' for m in missing)}")
    running = running_group(work)
    if running is not None:
        raise ServeError(
            f"TorchServe already running (or starting) from {work} (process group {running}); `make stop` first"
        )
    ports = {**DEFAULT_PORTS, **(ports or {})}
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    (work / KEY_FILE).unlink(missing_ok=True)
    cfg = work / "config.properties"
    effective = effective_config(config, store, names, ports)
    cfg.write_text(effective)
    # token authorization off (a configuration for KServe, where the cluster does access control): no key file
    no_tokens = dict(parse_properties(effective)).get("disable_token_authorization", "").strip().lower() == "true"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TS_") and k != "PYTHONPATH"}
    env.update(
        LOG_LOCATION=str(work / "logs"),
        METRICS_LOCATION=str(work / "logs"),
        TMPDIR=str(work / "tmp"),  # TorchServe's pid file lives in tempfile.gettempdir()
        TEMP=str(work / "tmp"),  # java.io.tmpdir: where archives are unpacked
        LEUKEMIA_TORCH_THREADS=str(torch_threads or int(os.environ.get("LEUKEMIA_TORCH_THREADS", "1"))),
        OMP_NUM_THREADS="1",
    )
    cmd = [
        str(Path(sys.executable).with_name("torchserve")),
        "--start",
        "--foreground",
        "--ncs",
        "--ts-config",
        str(cfg),
        "--model-store",
        str(store),
        "--log-config",
        str(LOG_CONFIG),
    ]
    with open(work / "torchserve.out", "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: the launcher, the JVM and the JVM's workers
            preexec_fn=die_with_parent() if lifeline is not None else None,
        )
    if lifeline is not None:
        lifeline.watch(proc.pid)
    (work / PGID_FILE).write_text(f"{proc.pid}\n")
    try:
        return _wait_ready(proc, work, names, ports, no_tokens, timeout_s, t0)
    except BaseException:
        _kill_group(proc.pid)
        _clear(work)
        if lifeline is not None:
            lifeline.release(proc.pid)
        raise


def _wait_ready(
    proc: subprocess.Popen[bytes],
    work: Path,
    names: list[str],
    ports: dict[str, int],
    no_tokens: bool,
    timeout_s: float,
    t0: float,
) -> ServerInfo:
    urls = {
        "inference": f"http://127.0.0.1:{ports['inference']}",
        "management": f"http://127.0.0.1:{ports['management']}",
        "metrics": f"http://127.0.0.1:{ports['metrics']}",
    }
    deadline = time.monotonic() + timeout_s
    keys: Keys | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServeError(f"TorchServe exited with {proc.returncode}\n{_log_tail(work)}")
        try:
            keys = keys or (Keys("", "", "") if no_tokens else read_keys(work))
            if _ready_models(urls, keys, names):
                break
        except (OSError, ValueError, KeyError, requests.RequestException):
            pass
        time.sleep(0.25)
    else:
        raise ServeError(f"models {names} not ready within {timeout_s:.0f} s\n{_log_tail(work)}")
    assert keys is not None
    info = ServerInfo(
        inference_url=urls["inference"],
        management_url=urls["management"],
        metrics_url=urls["metrics"],
        inference_key=keys.inference,
        management_key=keys.management,
        pid=proc.pid,
        workdir=str(work),
        models=tuple(names),
        ready_s=round(time.perf_counter() - t0, 2),
    )
    public = {k: v for k, v in asdict(info).items() if not k.endswith("_key")}
    (work / INFO_FILE).write_text(json.dumps(public, indent=2))
    return info


def _read_info(work: Path) -> ServerInfo | None:
    try:
        data = json.loads((work / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    data.setdefault("inference_key", "")
    data.setdefault("management_key", "")
    data["models"] = tuple(data.get("models", ()))
    return ServerInfo(**data)


def _kill_group(pid: int, grace_s: float = 20.0) -> None:
    """SIGTERM the process group started by :func:`start` (launcher, JVM, workers); SIGKILL if needed."""
    kill_groups([pid], grace_s)
    with contextlib.suppress(ChildProcessError):  # reap if it is our child
        os.waitpid(pid, os.WNOHANG)


def _read_pgid(work: Path) -> int | None:
    try:
        return int((work / PGID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def running_group(workdir: str | os.PathLike[str] = DEFAULT_WORKDIR) -> int | None:
    """The process group of the TorchServe started from ``workdir`` while any process of it lives (also
    while it is still starting), else None."""
    work = Path(workdir).resolve()
    info = _read_info(work)
    for pgid in {info.pid if info else None, _read_pgid(work)} - {None}:
        assert pgid is not None
        if pid_alive(pgid) or group_alive(pgid):
            return pgid
    return None


def _clear(work: Path) -> None:
    for name in (INFO_FILE, KEY_FILE, PGID_FILE):  # TorchServe leaves its key file behind when signalled
        (work / name).unlink(missing_ok=True)


def stop(workdir: str | os.PathLike[str] = DEFAULT_WORKDIR, info: ServerInfo | None = None) -> bool:
    """Stop the TorchServe started from ``workdir`` (ready or still starting); True if one was running."""
    work = Path(info.workdir if info else workdir).resolve()
    pgid = info.pid if info is not None and (pid_alive(info.pid) or group_alive(info.pid)) else running_group(work)
    if pgid is not None:
        _kill_group(pgid)
    elif info is not None:
        with contextlib.suppress(ChildProcessError):  # our child that died by itself: reap it
            os.waitpid(info.pid, os.WNOHANG)
    _clear(work)
    return pgid is not None


def status(workdir: str | os.PathLike[str] = DEFAULT_WORKDIR) -> ServerInfo | None:
    info = _read_info(Path(workdir).resolve())
    return info if info is not None and pid_alive(info.pid) else None
