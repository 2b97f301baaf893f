"""Deployment files checked offline: the same checks as `make compose-check` (docker/validate.py), proof
that a typo fails them, and the facts the images and manifests rely on (torch-free portal image,
non-root users, health checks, start order, KServe storage layout)."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bench.kserve_server import load_script
from core.registry import cell_model_names, get_cell_spec, get_spec, model_names, served_model_names
from portal.config.env import env_map
from release.archive import PACKED_PACKAGES, packed_files

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = DOCKER / "k8s"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile.*") if p.suffix != ".dockerignore")
#: the overlay that serves the models on KServe's TorchServe runtime instead of the project's predictor
TS_RUNTIME = "overlays/torchserve-runtime"


validate = load_script("deploy_validate", DOCKER / "validate.py")
kserve_layout = load_script("deploy_kserve_layout", DOCKER / "kserve_layout.py")


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


# --- the checks pass on the repository, and fail on a typo ------------------------------------------


def test_compose_matches_compose_spec() -> None:
    assert validate.check_compose(DOCKER / "compose.yaml") == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("    depends_on:\n", "    depend_on:\n"),
        ("    healthcheck:\n", "    healthchek:\n"),
        ("  uploads: {}", "  uploads: 3"),
    ],
)
def test_compose_typo_is_rejected(tmp_path: Path, old: str, new: str) -> None:
    text = (DOCKER / "compose.yaml").read_text()
    assert old in text
    (tmp_path / "compose.yaml").write_text(text.replace(old, new, 1))
    errors = validate.check_compose(tmp_path / "compose.yaml")
    assert errors and "compose-spec" in errors[0]


def test_dockerfiles_pass_hadolint() -> None:
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile.portal", "Dockerfile.torchserve", "Dockerfile.kserve"}
    assert validate.check_dockerfiles(DOCKERFILES) == []


def test_dockerfile_finding_fails(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text("FROM python:latest\nRUN cd /tmp && ls\n")
    errors = validate.check_dockerfiles([bad])
    assert errors and "DL3007" in errors[0]


def test_every_k8s_manifest_renders_and_matches_its_schema() -> None:
    assert validate.check_k8s(K8S) == []
    rendered = validate.render(K8S / "base")
    kinds = sorted({f"{o['apiVersion']}/{o['kind']}" for o in rendered})
    assert kinds == [
        "apps/v1/Deployment",
        "autoscaling/v2/HorizontalPodAutoscaler",
        "batch/v1/Job",
        "networking.k8s.io/v1/NetworkPolicy",
        "policy/v1/PodDisruptionBudget",
        "serving.kserve.io/v1beta1/InferenceService",
        "v1/ConfigMap",
        "v1/PersistentVolumeClaim",
        "v1/Secret",
        "v1/Service",
    ]
    alternative = {o["kind"] for o in validate.render(K8S / "overlays" / "torchserve-runtime")}
    assert "ServingRuntime" in alternative  # KServe's TorchServe runtime: the alternative, not the base


@pytest.mark.parametrize(
    ("manifest", "old", "new", "expect"),
    [
        ("base/portal-web.yaml", "  replicas: 2\n", "  replcias: 2\n", "'replcias' was unexpected"),
        (
            "base/portal-web.yaml",
            "      automountServiceAccountToken:",
            "      automountServiceAcountToken:",
            "unexpected",
        ),
        ("base/portal-worker.yaml", "averageUtilization: 60", "averageUtilisation: 60", "'averageUtilisation'"),
        ("base/migrate-job.yaml", "  backoffLimit: 4", "  backoffLimit: four", "is not of type"),
        ("base/kserve-models.yaml", "    scaleTarget: 2", "    scaleTaget: 2", "'scaleTaget' was unexpected"),
        (
            "base/kserve-models.yaml",
            "        readinessProbe:",
            "        readynessProbe:",
            "'readynessProbe' was unexpected",
        ),
        ("base/kserve-models.yaml", "containerPort: 8080", "containerPort: http", "is not of type"),
        (TS_RUNTIME + "/kustomization.yaml", "storageUri: pvc", "storageURI: pvc", "'storageURI' was unexpected"),
        (TS_RUNTIME + "/kserve-runtime.yaml", "  supportedModelFormats:", "  supportedModelFormat:", "unexpected"),
        ("base/portal-web.yaml", "kind: PodDisruptionBudget", "kind: PodDisruptionBudgett", "no vendored schema"),
        ("base/uploads-pvc.yaml", "  accessModes:", "  accesModes:", "'accesModes' was unexpected"),
    ],
)
def test_k8s_typo_is_rejected(tmp_path: Path, manifest: str, old: str, new: str, expect: str) -> None:
    root = tmp_path / "k8s"
    shutil.copytree(K8S, root)
    path = root / manifest
    text = path.read_text()
    assert old in text, f"{old!r} not in {manifest}"
    path.write_text(text.replace(old, new, 1))
    errors = validate.check_k8s(root)
    assert any(expect in e for e in errors), errors


def test_kustomization_typo_and_unlisted_manifest_are_rejected(tmp_path: Path) -> None:
    root = tmp_path / "k8s"
    shutil.copytree(K8S, root)
    (root / "base" / "extra.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    kust = root / "overlays" / "example" / "kustomization.yaml"
    kust.write_text(kust.read_text().replace("\nresources:", "\nresource:", 1))
    errors = validate.check_k8s(root)
    assert any("unknown field" in e and "resource" in e for e in errors), errors
    assert any("extra.yaml: not listed" in e for e in errors), errors


def test_make_target_runs_the_same_checks() -> None:
    proc = subprocess.run(
        [sys.executable, str(DOCKER / "validate.py")], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "all passed" in proc.stdout
    assert "docker/validate.py" in (REPO / "mk" / "deploy.mk").read_text()


def test_vendored_schema_index_is_complete() -> None:
    index = json.loads((DOCKER / "schemas" / "index.json").read_text())
    for relpath in index.values():
        schema = json.loads((DOCKER / "schemas" / relpath).read_text())
        assert schema["$defs"], relpath
    readme = (DOCKER / "schemas" / "README.md").read_text()
    assert "kubernetes-validate" in readme and "kserve" in readme and "1.37.0" in readme and "0.21.0" in readme


# --- images ------------------------------------------------------------------------------------------


def _instructions(dockerfile: Path, name: str) -> list[str]:
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    return [line.split(None, 1)[1] for line in text.splitlines() if line.upper().startswith(name + " ")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_unprivileged_with_pinned_bases(dockerfile: Path) -> None:
    users = _instructions(dockerfile, "USER")
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    for arg in _instructions(dockerfile, "ARG"):
        if "_IMAGE=" in arg:
            assert re.search(r":\d+\.\d+\.\d+", arg), f"base not pinned to an exact version: {arg}"
    # no secret baked into a layer: any secret-like assignment is a build-only placeholder
    for value in re.findall(r"(?i)\w*(?:password|secret_key|token)\w*=(\S+)", dockerfile.read_text()):
        assert "placeholder" in value, value


@pytest.mark.parametrize("name", ["Dockerfile.portal", "Dockerfile.torchserve"])
def test_images_have_healthchecks(name: str) -> None:
    (check,) = _instructions(DOCKER / name, "HEALTHCHECK")
    script = re.search(r'"(docker/[\w/]+healthcheck\.py)"', check)
    assert script and (REPO / script.group(1)).is_file()


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_portal_image_is_torch_free_and_carries_every_module_it_imports() -> None:
    heavy = {"torch", "torchvision", "timm", "training"}
    portal_imports = set().union(*(_imports(p) for p in (REPO / "portal").rglob("*.py")))
    assert not {m for m in portal_imports if m.split(".")[0] in heavy}
    copies = " ".join(_instructions(DOCKER / "Dockerfile.portal", "COPY"))
    copied = set(re.findall(r"handlers/(\w+)\.py", copies))
    # the torch-free core package, whole, and the handlers modules the portal imports (and theirs)
    assert re.search(r"\bcore/ core/", copies), "Dockerfile.portal must COPY core/"
    for path in (REPO / "core").rglob("*.py"):
        lazy = {m for m in _imports(path) if m.split(".")[0] in heavy}
        assert lazy <= {"training", "served_model.compat"}, (path, lazy)  # registry.data_config: lazily, for timm
    if any(m.split(".")[0] == "serving" for m in portal_imports):
        assert re.search(r"\bserving/ serving/", copies), "Dockerfile.portal must COPY serving/"
        for path in (REPO / "serving").rglob("*.py"):
            assert not {m for m in _imports(path) if m.split(".")[0] in heavy | {"handlers"}}, path
    needed = {m.split(".")[1] for m in portal_imports if m.startswith("handlers.")}
    todo = list(needed)
    while todo:
        for m in _imports(REPO / "handlers" / f"{todo.pop()}.py"):
            assert m.split(".")[0] not in heavy, m
            if m.startswith("handlers.") and m.split(".")[1] not in needed:
                needed.add(m.split(".")[1])
                todo.append(m.split(".")[1])
    assert needed <= copied, f"Dockerfile.portal must COPY handlers/{sorted(needed - copied)}"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: not an exact pin: {line}"
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_portal_requirements_are_torch_free_pins_agreeing_with_the_lock() -> None:
    portal = _pins(REPO / "requirements" / "portal.txt")
    lock = _pins(REPO / "requirements" / "lock.txt")
    assert not set(portal) & {"torch", "torchvision", "timm", "torchserve"}
    assert {"django", "gunicorn", "whitenoise", "django-q2", "mysqlclient", "numpy", "pillow"} <= set(portal)
    for name, version in portal.items():
        if name in lock:
            assert lock[name] == version, f"{name}: portal.txt {version}, lock.txt {lock[name]}"


def test_torchserve_requirements_agree_with_the_lock() -> None:
    serving = _pins(DOCKER / "torchserve" / "requirements.txt")
    lock = _pins(REPO / "requirements" / "lock.txt")
    assert serving["torch"] == "2.13.0+cpu" and "django" not in serving
    for name, version in serving.items():
        if name in lock:
            assert lock[name] == version.split("+")[0], name


class _Healthz(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def healthz_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_portal_healthcheck_probes_healthz_as_the_proxy_would(healthz_server: int) -> None:
    env = {"PORTAL_BIND": f"0.0.0.0:{healthz_server}", "DJANGO_ALLOWED_HOSTS": ".lab.example.org,*", "PATH": ""}
    script = str(DOCKER / "portal" / "healthcheck.py")
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert _Healthz.seen[-1]["path"] == "/healthz"
    assert _Healthz.seen[-1]["host"] == "lab.example.org"
    assert _Healthz.seen[-1]["x-forwarded-proto"] == "https"
    down = {**env, "PORTAL_BIND": "127.0.0.1:1"}
    assert subprocess.run([sys.executable, script], env=down, capture_output=True, timeout=30).returncode == 1


# --- compose: start order, secrets, volumes ------------------------------------------------------------


def test_compose_start_order_secrets_and_volumes() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"netns", "mariadb", "torchserve", "migrate", "web", "worker", "proxy"}
    # one loopback for TorchServe, portal and proxy, held by an idle container; only it publishes ports
    for name in ("torchserve", "migrate", "web", "worker", "proxy"):
        assert services[name]["network_mode"] == "service:netns", name
        assert "ports" not in services[name], name
    assert services["netns"]["ports"] == ["443:8443", "9443:9443"]
    assert services["mariadb"]["image"].startswith("mariadb:10.11.")
    assert "healthcheck" in services["mariadb"] and "mariadb-data:/var/lib/mysql" in services["mariadb"]["volumes"]
    assert services["migrate"]["depends_on"]["mariadb"]["condition"] == "service_healthy"
    for name in ("web", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "uploads:/var/lib/leukemia/storage" in services[name]["volumes"]
        assert "ts-run:/run/torchserve:ro" in services[name]["volumes"]
    assert services["worker"]["depends_on"]["torchserve"]["condition"] == "service_healthy"
    assert services["proxy"]["depends_on"]["web"]["condition"] == "service_healthy"
    assert "ts-run:/srv/leukemia/run" in services["torchserve"]["volumes"]
    assert set(compose["secrets"]) == {"db_root_password", "tls_cert", "tls_key"}
    # every secret-looking value is an interpolation from the lab's env file, never a literal
    for service in services.values():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"SECRET|PASSWORD|DATABASE_URL", key) and not key.endswith("_FILE"):
                assert "${" in str(value), f"{key} is a literal"
    assert (DOCKER / ".gitignore").read_text().split().count("lab.env") == 1


# --- Kubernetes / KServe facts ---------------------------------------------------------------------------


def _rendered(kind: str) -> list[dict[str, Any]]:
    return [o for o in validate.render(K8S / "base") if o["kind"] == kind]


def _model_config() -> dict[str, dict[str, dict[str, Any]]]:
    """The per-model ``models`` entry of docker/torchserve/config.properties."""
    props = kserve_layout.parse_properties((DOCKER / "torchserve" / "config.properties").read_text())
    config: dict[str, dict[str, dict[str, Any]]] = json.loads(props["models"])
    return config


def _models() -> list[str]:
    return sorted(_model_config())


def test_torchserve_config_lists_every_served_model_at_its_registry_version() -> None:
    """One entry per model TorchServe serves, in the registry's order: the next model cannot be forgotten."""
    config = _model_config()
    assert list(config) == served_model_names()
    for name, versions in config.items():
        spec = get_spec(name) if name in model_names() else get_cell_spec(name)
        ((version, settings),) = versions.items()
        assert version == spec.version, f"{name}: config.properties {version}, registry {spec.version}"
        assert settings["marName"] == f"{name}.mar" and settings["defaultVersion"] is True
        assert settings["minWorkers"] == settings["maxWorkers"] == 1, name  # one worker per model on 2 cores
        assert settings["responseTimeout"] >= 60 and settings["maxBatchDelay"] >= 0, name
    for name in cell_model_names():
        # one frame per request, with a variable number of cells: never batched
        assert next(iter(config[name].values()))["batchSize"] == 1, name


def _storage_uri(isvc: dict[str, Any]) -> str:
    """Where an InferenceService's model comes from: a custom predictor's STORAGE_URI, or ``model.storageUri``."""
    predictor = isvc["spec"]["predictor"]
    if "containers" in predictor:
        (container,) = predictor["containers"]
        (uri,) = [e["value"] for e in container["env"] if e["name"] == "STORAGE_URI"]
        return str(uri)
    return str(predictor["model"]["storageUri"])


def test_one_inference_service_per_model_with_its_own_target() -> None:
    services = _rendered("InferenceService")
    by_model = {_storage_uri(s).rsplit("/", 1)[1]: s for s in services}
    assert sorted(by_model) == _models() == sorted(served_model_names())
    (policy,) = _rendered("NetworkPolicy")
    guarded = policy["spec"]["podSelector"]["matchLabels"].items()
    assert not _rendered("ServingRuntime")  # the base does not depend on KServe's TorchServe runtime
    for name, isvc in by_model.items():
        predictor = isvc["spec"]["predictor"]
        assert isvc["metadata"]["labels"]["leukemia.model"] == name
        assert guarded <= predictor["labels"].items(), f"{name}: model pods outside the NetworkPolicy"
        assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] >= 1
        assert isvc["metadata"]["name"] == name.replace("_", "-")
        assert _storage_uri(isvc) == f"pvc://leukemia-models/{name}"
        # the project's predictor (kserve_predictor/, docker/Dockerfile.kserve-predictor), this model only
        (container,) = predictor["containers"]
        assert (
            container["name"] == "kserve-container" and container["image"].split(":")[0] == "leukemia-kserve-predictor"
        )
        assert container["command"] == ["python", "-m", "kserve_predictor"]
        assert f"--models={name}" in container["args"] and "--model_dir=/mnt/models" in container["args"]
        (port,) = container["ports"]
        assert f"--http_port={port['containerPort']}" in container["args"]
        probe = container["readinessProbe"]["httpGet"]
        assert (probe["path"], probe["port"]) == (f"/v2/models/{name}/ready", port["containerPort"])
        assert {"name": "LEUKEMIA_TORCH_THREADS", "value": "1"} in container["env"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # the unpacked archive
    # the alternative: KServe's TorchServe runtime on the same storage layout, same names and scaling
    alternative = validate.render(K8S / TS_RUNTIME)
    (runtime,) = [o for o in alternative if o["kind"] == "ServingRuntime"]
    container = runtime["spec"]["containers"][0]
    assert "--model-store=/mnt/models/model-store" in container["args"]
    assert "--ts-config=/mnt/models/config/config.properties" in container["args"]
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    assert {"name": "TS_SERVICE_ENVELOPE", "value": ""} in container["env"]  # v2 reaches the handler as sent
    for isvc in (o for o in alternative if o["kind"] == "InferenceService"):
        predictor = isvc["spec"]["predictor"]
        base = by_model[_storage_uri(isvc).rsplit("/", 1)[1]]["spec"]["predictor"]
        assert "containers" not in predictor and "volumes" not in predictor
        assert predictor["model"]["runtime"] == "leukemia-torchserve"
        assert predictor["model"]["modelFormat"]["name"] == "pytorch"
        assert predictor["model"]["protocolVersion"] == "v2"  # the handlers answer the Open Inference Protocol
        assert {k: v for k, v in predictor.items() if k != "model"} == {
            k: v for k, v in base.items() if k not in ("containers", "volumes")
        }


def test_the_portal_calls_every_model_at_its_kserve_predictor(monkeypatch: pytest.MonkeyPatch) -> None:
    """PORTAL_MODEL_URLS names each served model's InferenceService predictor (KServe's cluster-local host
    ``<name>-predictor.<namespace>.svc.cluster.local``), read as the portal's settings read it."""
    (config,) = [c for c in _rendered("ConfigMap") if c["metadata"]["name"] == "leukemia-portal"]
    data = config["data"]
    assert data["PORTAL_INFERENCE_PROTOCOL"] == "v2"
    monkeypatch.setenv("PORTAL_MODEL_URLS", data["PORTAL_MODEL_URLS"])
    urls = env_map("PORTAL_MODEL_URLS", {})
    names = {_storage_uri(s).rsplit("/", 1)[1]: s["metadata"]["name"] for s in _rendered("InferenceService")}
    assert set(urls) == set(names) == set(served_model_names())
    for model, url in urls.items():
        assert url == f"http://{names[model]}-predictor.leukemia.svc.cluster.local", model


def test_portal_pods_share_uploads_and_web_is_protected() -> None:
    (pvc,) = [p for p in _rendered("PersistentVolumeClaim") if p["metadata"]["name"] == "leukemia-uploads"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    deployments = {d["metadata"]["name"]: d for d in _rendered("Deployment")}
    for d in deployments.values():
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert {"name": "uploads", "persistentVolumeClaim": {"claimName": "leukemia-uploads"}} in pod["volumes"]
    web = deployments["leukemia-portal-web"]["spec"]["template"]["spec"]["containers"][0]
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in _rendered("HorizontalPodAutoscaler")}
    assert targets == {"leukemia-portal-web", "leukemia-portal-worker"}
    (pdb,) = _rendered("PodDisruptionBudget")
    assert (
        pdb["spec"]["selector"]["matchLabels"] == deployments["leukemia-portal-web"]["spec"]["selector"]["matchLabels"]
    )
    (job,) = _rendered("Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["migrate", "--noinput"]


def test_kserve_storage_layout(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for name in ("xception_bigru", "mobilenetv3_lstm"):
        (store / f"{name}.mar").write_bytes(b"PK-not-a-real-archive")
    roots = kserve_layout.write_layout(store, tmp_path / "out")
    assert sorted(r.name for r in roots) == ["mobilenetv3_lstm", "xception_bigru"]
    root = tmp_path / "out" / "xception_bigru"
    assert (root / "model-store" / "xception_bigru.mar").read_bytes() == b"PK-not-a-real-archive"
    props = kserve_layout.parse_properties((root / "config" / "config.properties").read_text())
    assert props["inference_address"] == "http://127.0.0.1:8085"
    assert props["model_store"] == "/mnt/models/model-store"
    assert props["enable_envvars_config"] == "true" and props["disable_token_authorization"] == "true"
    assert "load_models" not in props and "models" not in props
    snapshot = json.loads(props["model_snapshot"])
    assert snapshot["modelCount"] == 1 and list(snapshot["models"]) == ["xception_bigru"]
    (version,) = snapshot["models"]["xception_bigru"].values()
    base = json.loads(
        kserve_layout.parse_properties((DOCKER / "torchserve" / "config.properties").read_text())["models"]
    )
    assert version == base["xception_bigru"]["1.0"]
    assert re.fullmatch(
        props["allowed_urls"].replace("\\\\", "\\"), "file:///mnt/models/model-store/xception_bigru.mar"
    )


def test_kserve_layout_of_every_served_model_keeps_its_settings(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for name in served_model_names():
        (store / f"{name}.mar").write_bytes(b"PK-not-a-real-archive")
    roots = kserve_layout.write_layout(store, tmp_path / "out")
    assert sorted(r.name for r in roots) == sorted(served_model_names())
    base = _model_config()
    for root in roots:
        props = kserve_layout.parse_properties((root / "config" / "config.properties").read_text())
        snapshot = json.loads(props["model_snapshot"])
        assert snapshot["models"] == {root.name: base[root.name]}, root.name  # not the fallback settings


# --- the TorchServe images carry what the handlers import -------------------------------------------------


def _handler_closure() -> list[Path]:
    """Every repository module packed into the served models' archives (release.archive's own list)."""
    return packed_files()


def _third_party_distributions(files: list[Path]) -> set[str]:
    modules = {m.split(".")[0] for p in files for m in _imports(p)}
    modules -= set(sys.stdlib_module_names) | set(PACKED_PACKAGES) | {"__future__"}
    dists = importlib.metadata.packages_distributions()
    missing = sorted(m for m in modules if m not in dists)
    assert not missing, f"imported but not installed: {missing}"
    return {canonicalize_name(d) for m in modules for d in dists[m]}


def test_torchserve_image_copies_every_package_the_handlers_import() -> None:
    packages = {p.relative_to(REPO).parts[0] for p in _handler_closure()}
    assert packages == {"cells", "core", "handlers", "served_model"}
    copies = _instructions(DOCKER / "Dockerfile.torchserve", "COPY")
    ignore = (DOCKER / "Dockerfile.torchserve.dockerignore").read_text().split()
    for package in sorted(packages):
        assert f"{package}/ {package}/" in copies, f"Dockerfile.torchserve must COPY {package}/"
        assert f"!{package}/" in ignore, f"Dockerfile.torchserve.dockerignore must admit {package}/"


def test_torchserve_requirements_cover_the_handlers_imports_and_their_dependencies() -> None:
    serving = {canonicalize_name(k): v for k, v in _pins(DOCKER / "torchserve" / "requirements.txt").items()}
    needed = _third_party_distributions(_handler_closure())
    assert {"scikit-image", "scipy", "timm", "torch"} <= needed
    assert needed <= set(serving), f"not in docker/torchserve/requirements.txt: {sorted(needed - set(serving))}"
    # closed under install requirements (read from the project venv, which holds the lock's versions);
    # pip's own tools come with the python base image
    for name, version in serving.items():
        for text in importlib.metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            if dep in {"pip", "setuptools", "wheel"}:
                continue
            assert dep in serving, f"{name}=={version} requires {req}, not pinned"
            assert req.specifier.contains(serving[dep].split("+")[0], prereleases=True), (name, str(req))


#: What pytorch/torchserve-kfs already ships among the handlers' imports (Dockerfile.kserve adds the rest).
KSERVE_BASE_PROVIDES = {"torch", "numpy", "pillow"}


def test_kserve_image_adds_the_handlers_imports_at_the_serving_pins() -> None:
    serving = {canonicalize_name(k): v for k, v in _pins(DOCKER / "torchserve" / "requirements.txt").items()}
    (run,) = _instructions(DOCKER / "Dockerfile.kserve", "RUN")
    pins = {canonicalize_name(n): v for n, v in re.findall(r"([A-Za-z0-9_.-]+)==(\S+)", run)}
    needed = _third_party_distributions(_handler_closure()) - KSERVE_BASE_PROVIDES
    assert needed <= set(pins), f"Dockerfile.kserve must pip install {sorted(needed - set(pins))}"
    for name, version in pins.items():
        assert serving.get(name) == version, f"{name}: Dockerfile.kserve {version}, serving {serving.get(name)}"


#: docker/torchserve/requirements.txt pins that requirements/kserve.txt keeps at KServe's own (documented there)
KSERVE_OWN_PINS = {"protobuf", "psutil"}


def test_kserve_predictor_image_copies_what_the_predictor_imports() -> None:
    """docker/Dockerfile.kserve-predictor: the predictor and every local package it runs, admitted by its
    .dockerignore; no TorchServe."""
    packages = {p.relative_to(REPO).parts[0] for p in _handler_closure()} | {"kserve_predictor"}
    local = {"cells", "core", "handlers", "training", "serving", "kserve_predictor"}
    for path in (REPO / "kserve_predictor").glob("*.py"):
        packages |= {m.split(".")[0] for m in _imports(path)} & local
    dockerfile = DOCKER / "Dockerfile.kserve-predictor"
    copies = _instructions(dockerfile, "COPY")
    ignore = (DOCKER / "Dockerfile.kserve-predictor.dockerignore").read_text().split()
    for package in sorted(packages):
        assert f"{package}/ {package}/" in copies, f"Dockerfile.kserve-predictor must COPY {package}/"
        assert f"!{package}/" in ignore, f"its .dockerignore must admit {package}/"
    (cmd,) = _instructions(dockerfile, "CMD")
    assert json.loads(cmd)[:3] == ["python", "-m", "kserve_predictor"]
    assert "torchserve" not in " ".join(_instructions(dockerfile, "RUN")).lower()


def test_kserve_env_pins_the_runtimes_at_the_serving_pins() -> None:
    """requirements/kserve.txt (make kserve-env, the predictor image): KServe plus every distribution the
    runtimes import, at the serving image's pins (KServe's own pins kept where they differ), no TorchServe."""
    kserve_pins = _pins(REPO / "requirements" / "kserve.txt")
    kserve_env: dict[str, str] = {canonicalize_name(k): v for k, v in kserve_pins.items()}
    serving: dict[str, str] = {
        canonicalize_name(k): v.split("+")[0] for k, v in _pins(DOCKER / "torchserve" / "requirements.txt").items()
    }
    needed = _third_party_distributions(_handler_closure()) - {"openvino"}  # no model serves on OpenVINO
    assert kserve_env["kserve"] == "0.21.0" and "torchserve" not in kserve_env
    assert needed <= set(kserve_env), f"requirements/kserve.txt must pin {sorted(needed - set(kserve_env))}"
    for name, version in kserve_env.items():
        if name in serving and name not in KSERVE_OWN_PINS:
            assert version == serving[name], f"{name}: kserve.txt {version}, serving {serving[name]}"
    constraints = _pins(REPO / "requirements" / "constraints.txt")
    assert kserve_env["torch"] == constraints["torch"] and kserve_env["torchvision"] == constraints["torchvision"]
    assert "-c $(CONSTRAINTS)" in (REPO / "mk" / "deploy.mk").read_text()  # the CPU wheel, never CUDA


def test_portal_image_carries_the_ensemble_parameters() -> None:
    """The consensus applies model_store/ensemble.json (core.ensemble.ENSEMBLE_FILE), at the same path under WORKDIR."""
    from core.ensemble import ENSEMBLE_FILE

    rel = ENSEMBLE_FILE.relative_to(REPO).as_posix()
    assert ENSEMBLE_FILE.is_file()
    assert f"{rel} {rel}" in _instructions(DOCKER / "Dockerfile.portal", "COPY")
    assert f"!{rel}" in (DOCKER / "Dockerfile.portal.dockerignore").read_text().split()
