"""Rebuild the vendored Kubernetes and KServe JSON schemas in docker/schemas/ (see README.md there).

Offline, from two PyPI packages (no GitHub, no schema host)::

    pip download --no-deps -d /tmp/schemas kubernetes-validate==1.37.0 kserve==0.21.0
    python docker/schemas/build_schemas.py --kubernetes-validate-wheel /tmp/schemas/kubernetes_validate-*.whl \
        --kserve-wheel /tmp/schemas/kserve-*.whl

Kubernetes: kubernetes-validate ships the upstream OpenAPI as JSON schemas, "strict" flavour
(``additionalProperties: false`` on every object). Each kind we deploy is written as one
self-contained file: its schema plus the closure of the definitions it references, descriptions
dropped (size).

KServe: the SDK ships no JSON schema, but every API type is an OpenAPI-generated model class with
``openapi_types`` (Python attribute -> type), ``attribute_map`` (attribute -> JSON key) and setters
that reject ``None`` for required fields. This script reads those classes statically (ast, no
import, so the SDK's dependencies are not needed) and writes a strict schema for
``InferenceService`` whose Kubernetes types (V1Container, V1Probe, ...) resolve to the same
Kubernetes definitions.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
K8S_VERSION = "v1.37.0"
K8S_FLAVOUR = f"{K8S_VERSION}-local-strict"
KSERVE_VERSION = "0.21.0"

# apiVersion/kind -> file name in kubernetes-validate's schema folder.
K8S_KINDS = {
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("v1", "Secret"): "secret-v1.json",
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaim-v1.json",
    ("v1", "ServiceAccount"): "serviceaccount-v1.json",
    ("batch/v1", "Job"): "job-batch-v1.json",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscaler-autoscaling-v2.json",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudget-policy-v1.json",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicy-networking-v1.json",
}
# SDK class, apiVersion, kind, output file.
KSERVE_KINDS = [
    (
        "V1beta1InferenceService",
        "serving.kserve.io/v1beta1",
        "InferenceService",
        "inferenceservice-serving-v1beta1.json",
    ),
    ("V1alpha1ServingRuntime", "serving.kserve.io/v1alpha1", "ServingRuntime", "servingruntime-serving-v1alpha1.json"),
]
REF_PREFIX = "/api/_definitions.json#/$defs/"


def _strip_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _strip_descriptions(v)
            for k, v in node.items()
            if not (k == "description" and isinstance(v, str)) and not k.startswith("x-kubernetes")
        }
    if isinstance(node, list):
        return [_strip_descriptions(v) for v in node]
    return node


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                found.add(v)
            else:
                found |= _refs(v)
    elif isinstance(node, list):
        for v in node:
            found |= _refs(v)
    return found


def _relink(node: Any) -> Any:
    """Turn kubernetes-validate's ``/api/_definitions.json#/$defs/X`` into local ``#/$defs/X``."""
    if isinstance(node, dict):
        return {
            k: ("#/$defs/" + v.removeprefix(REF_PREFIX) if k == "$ref" and isinstance(v, str) else _relink(v))
            if not (k == "$ref" and isinstance(v, str) and v.startswith("#/"))
            else v
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_relink(v) for v in node]
    return node


def _closure(roots: set[str], defs: dict[str, Any]) -> dict[str, Any]:
    todo = sorted(r.removeprefix(REF_PREFIX).removeprefix("#/$defs/") for r in roots)
    out: dict[str, Any] = {}
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out[name] = defs[name]
        todo.extend(r.removeprefix(REF_PREFIX).removeprefix("#/$defs/") for r in _refs(defs[name]))
    return dict(sorted(out.items()))


def _read_k8s(wheel: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    base = f"kubernetes_validate/kubernetes-json-schema/{K8S_FLAVOUR}/"
    with zipfile.ZipFile(wheel) as z:
        defs = json.loads(z.read(base + "_definitions.json"))["$defs"]
        kinds = {name: json.loads(z.read(base + name)) for name in K8S_KINDS.values()}
    return defs, kinds


def build_kubernetes(wheel: Path, out: Path) -> dict[str, Any]:
    defs, kinds = _read_k8s(wheel)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in kinds.items():
        schema = dict(schema)
        schema.pop("$id", None)
        schema["$defs"] = _closure(_refs(schema), defs)
        schema = _strip_descriptions(_relink(schema))
        (out / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    return defs


# --- KServe -------------------------------------------------------------------------------------

_SCALARS = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "object": {},
    "datetime": {"type": "string"},
    "date": {"type": "string"},
}


def _literal_dict(cls: ast.ClassDef, name: str) -> dict[str, str]:
    for stmt in cls.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
            value = ast.literal_eval(stmt.value)
            assert isinstance(value, dict)
            return value
    raise KeyError(f"{cls.name}.{name}")


def _required(source: str, cls: ast.ClassDef) -> list[str]:
    """Attributes whose setter raises on None (the generator's marker for a required field)."""
    required = []
    for stmt in cls.body:
        if isinstance(stmt, ast.FunctionDef) and any(
            isinstance(d, ast.Attribute) and d.attr == "setter" for d in stmt.decorator_list
        ):
            body = ast.get_source_segment(source, stmt) or ""
            if re.search(r"is None:\s*\n\s*raise ValueError\(\"Invalid value for `\w+`, must not be `None`", body):
                required.append(stmt.name)
    return required


def _read_kserve_models(wheel: Path) -> dict[str, tuple[dict[str, str], dict[str, str], list[str]]]:
    models = {}
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if not re.fullmatch(r"kserve/models/[a-z0-9_]+\.py", info.filename):
                continue
            source = z.read(info).decode()
            for node in ast.parse(source).body:
                if isinstance(node, ast.ClassDef):
                    try:
                        types = _literal_dict(node, "openapi_types")
                        names = _literal_dict(node, "attribute_map")
                    except KeyError:
                        continue
                    models[node.name] = (types, names, _required(source, node))
    return models


def _k8s_def_for(class_name: str, defs: dict[str, Any]) -> str:
    if class_name in ("ResourceQuantity", "V1beta1MetricQuantity"):  # the latter has no SDK class
        return "io.k8s.apimachinery.pkg.api.resource.Quantity"
    if class_name.startswith("K8sIo"):  # Go-package-qualified name, e.g. K8sIoApiAutoscalingV2Foo
        for key in defs:
            parts = key.split(".")
            if parts[:2] == ["io", "k8s"]:
                pkg = ["k8s", "io", *parts[2:-1]]
                if "".join(p[:1].upper() + p[1:] for p in pkg) + parts[-1] == class_name:
                    return key
        raise KeyError(class_name)
    m = re.fullmatch(r"V(\d+)((?:alpha|beta)\d+)?([A-Z]\w*)", class_name)
    if not m:
        raise KeyError(class_name)
    version = "v" + m.group(1) + (m.group(2) or "")
    kind = m.group(3)
    for prefix in ("io.k8s.api.core.", "io.k8s.apimachinery.pkg.apis.meta.", "io.k8s.api.autoscaling."):
        if prefix + version + "." + kind in defs:
            return prefix + version + "." + kind
    hits = sorted(k for k in defs if k.endswith(f".{version}.{kind}"))
    if len(hits) != 1:
        raise KeyError(f"{class_name}: {hits}")
    return hits[0]


def build_kserve(wheel: Path, defs: dict[str, Any], out: Path) -> None:
    models = _read_kserve_models(wheel)
    kserve_defs: dict[str, Any] = {}
    k8s_refs: set[str] = set()
    missing: set[str] = set()

    def type_schema(t: str) -> dict[str, Any]:
        t = t.strip()
        if t in _SCALARS:
            return dict(_SCALARS[t])
        if m := re.fullmatch(r"list\[(.+)\]", t):
            return {"type": "array", "items": type_schema(m.group(1))}
        if m := re.fullmatch(r"dict\(str, (.+)\)", t):
            return {"type": "object", "additionalProperties": type_schema(m.group(1))}
        if t in models:
            model(t)
            return {"$ref": f"#/$defs/kserve.{t}"}
        if re.fullmatch(r"V\d+(alpha|beta)\d+\w+", t) and t not in models and t != "V1beta1MetricQuantity":
            # Referenced but not shipped by the SDK (V1alpha1WorkerSpec in 0.21.0): any object, noted.
            missing.add(t)
            return {"type": "object"}
        ref = _k8s_def_for(t, defs)
        k8s_refs.add(ref)
        return {"$ref": f"#/$defs/{ref}"}

    def model(name: str) -> None:
        if f"kserve.{name}" in kserve_defs:
            return
        types, names, required = models[name]
        if name in {cls for cls, *_ in KSERVE_KINDS}:
            # status is written by the controller, never by a manifest (and references Knative types
            # that the SDK does not model): a manifest that sets it is rejected.
            types = {k: v for k, v in types.items() if k != "status"}
        kserve_defs[f"kserve.{name}"] = {}  # placeholder against recursion
        schema: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {names[attr]: type_schema(t) for attr, t in types.items()},
        }
        if required:
            schema["required"] = sorted(names[a] for a in required)
        kserve_defs[f"kserve.{name}"] = schema

    out.mkdir(parents=True, exist_ok=True)
    for cls, api_version, kind, file_name in KSERVE_KINDS:
        kserve_defs.clear()
        k8s_refs.clear()
        missing.clear()
        model(cls)
        top = kserve_defs[f"kserve.{cls}"]
        top["properties"]["apiVersion"] = {"const": api_version}
        top["properties"]["kind"] = {"const": kind}
        top["required"] = sorted({"apiVersion", "kind", "metadata", "spec", *top.get("required", [])})
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": f"#/$defs/kserve.{cls}",
            "$comment": f"generated by docker/schemas/build_schemas.py from kserve {KSERVE_VERSION} SDK models"
            + (f"; not in the SDK, accepted as any object: {', '.join(sorted(missing))}" if missing else ""),
            "$defs": {**dict(sorted(kserve_defs.items())), **_closure(k8s_refs, defs)},
        }
        schema = _strip_descriptions(_relink(schema))
        (out / file_name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubernetes-validate-wheel", type=Path, required=True)
    ap.add_argument("--kserve-wheel", type=Path, required=True)
    args = ap.parse_args()
    defs = build_kubernetes(args.kubernetes_validate_wheel, HERE / f"kubernetes-{K8S_VERSION}-strict")
    build_kserve(args.kserve_wheel, defs, HERE / f"kserve-{KSERVE_VERSION}")
    index = {f"{api}/{kind}": f"kubernetes-{K8S_VERSION}-strict/{name}" for (api, kind), name in K8S_KINDS.items()}
    index |= {f"{api}/{kind}": f"kserve-{KSERVE_VERSION}/{name}" for _, api, kind, name in KSERVE_KINDS}
    (HERE / "index.json").write_text(json.dumps(dict(sorted(index.items())), indent=1) + "\n")


if __name__ == "__main__":
    main()
