"""The served models' versions: candidate archives, gate reports, the promotion record, TorchServe's switch.

Torch-free (the portal's promote and rollback commands and its Models page import it). The versions store
(``LEUKEMIA_MODEL_VERSIONS``, default ``var/model_versions``; lab state, never committed) holds per model::

    <model>/<model>-<version>.mar         a candidate archive (``make retrain``), with <model>-<version>.card.json
    <model>/gate-<version>.json / .md     its gate report and comparison card (``make gate``)
    <model>/promotions.json               the promotion record: the default version and every switch

The shipped archive (``model_store/<model>.mar``) is the base version. TorchServe serves several versions of a
model: a promoted version is registered next to the base through the management API (loopback, management
key), from a ``file://`` URL that ``allowed_urls`` admits only under ``model_versions/<model>/``, and made the
default with ``PUT /models/<model>/<version>/set-default``; ``/predictions/<model>`` and
``/explanations/<model>`` then answer with it, and each answer names its version. After every switch
TorchServe keeps exactly two versions loaded (one worker each), the default and the rollback target
(:func:`settle`): the target is registered if it is not loaded, so rollback stays one ``set-default``, and every
other version is unregistered (the one demoted by this switch once its queue has drained), so memory does not
grow with each promotion. A start loads the shipped version, then the promoted default and the rollback target.
TorchServe copies a URL-registered archive into its model store; the copy is removed at once (the store must
hold only the shipped ``<model>.mar`` files, which ``make serve`` loads by file name): the worker runs from the
archive TorchServe unpacked into its working directory.

Promotion and rollback are refused unless the target version has a passed gate report (the base version's
release evidence is its model card: rollback to it needs none). :func:`restore` re-applies the record after a
TorchServe start.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from serving.torchserve import REPO, ServerInfo, read_keys

__all__ = [
    "VERSIONS_ENV",
    "PromotionError",
    "Versions",
    "served_versions",
    "switch_default",
    "settle",
    "restore",
    "versions_root",
]

VERSIONS_ENV = "LEUKEMIA_MODEL_VERSIONS"
RECORD_FILE = "promotions.json"
#: seconds a demoted version stays loaded after its queue is empty (the request its worker runs finishes)
DRAIN_GRACE_S = 5.0


def versions_root() -> Path:
    """Where candidate archives, gate reports and promotion records live (a directory named ``model_versions``:
    TorchServe's ``allowed_urls`` admits archives only there)."""
    return Path(os.environ.get(VERSIONS_ENV) or REPO / "var" / "model_versions")


class PromotionError(RuntimeError):
    """A promotion or rollback was refused (no passed gate report, unknown version) or TorchServe failed."""


@dataclass(frozen=True)
class Versions:
    """One model's versions on disk: the base archive, the candidates, their gate reports, the record."""

    model: str
    root: Path
    model_store: Path

    @classmethod
    def of(cls, model: str, root: Path | None = None, model_store: Path | None = None) -> Versions:
        return cls(model, Path(root or versions_root()) / model, Path(model_store or REPO / "model_store"))

    # -- files -------------------------------------------------------------------------------
    def archive(self, version: str) -> Path:
        return self.root / f"{self.model}-{version}.mar"

    def store_archive(self) -> Path:
        """The shipped version's archive (``model_store/<model>.mar``)."""
        return self.model_store / f"{self.model}.mar"

    def card_path(self, version: str) -> Path:
        if version == self.base_version():
            return self.model_store / f"{self.model}.card.json"
        return self.root / f"{self.model}-{version}.card.json"

    def report_path(self, version: str) -> Path:
        return self.root / f"gate-{version}.json"

    def base_card(self) -> dict[str, Any]:
        return json.loads((self.model_store / f"{self.model}.card.json").read_text())  # type: ignore[no-any-return]

    def base_version(self) -> str:
        return str(self.base_card()["version"])

    def card(self, version: str) -> dict[str, Any] | None:
        path = self.card_path(version)
        return json.loads(path.read_text()) if path.is_file() else None

    def candidates(self) -> list[str]:
        """Versions with an archive in the store, oldest first."""
        if not self.root.is_dir():
            return []
        prefix = f"{self.model}-"
        found = [(p.stat().st_mtime, p.name[len(prefix) : -len(".mar")]) for p in self.root.glob(f"{prefix}*.mar")]
        return [v for _, v in sorted(found)]

    def next_version(self, base: str) -> str:
        """``base`` with its last number raised past every version already known (1.1 -> 1.2)."""
        taken = {self.base_version(), *self.candidates()}
        head, _, last = base.rpartition(".")
        n = int(last) if last.isdigit() else 0
        while True:
            n += 1
            version = f"{head}.{n}" if head else str(n)
            if version not in taken:
                return version

    def report(self, version: str) -> dict[str, Any] | None:
        path = self.report_path(version)
        return json.loads(path.read_text()) if path.is_file() else None

    def passed_report(self, version: str) -> dict[str, Any]:
        """The version's gate report; raises :class:`PromotionError` unless it exists and passed."""
        report = self.report(version)
        if report is None:
            raise PromotionError(f"{self.model} {version}: no gate report ({self.report_path(version)}); run make gate")
        if report.get("model") != self.model or report.get("candidate", {}).get("version") != version:
            raise PromotionError(f"{self.report_path(version)} is not the gate report of {self.model} {version}")
        if report.get("passed") is not True:
            failed = ", ".join(c["name"] for c in report.get("criteria", []) if not c.get("passed"))
            raise PromotionError(f"{self.model} {version}: its gate report failed ({failed or 'not passed'})")
        return report

    # -- the promotion record ----------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        path = self.root / RECORD_FILE
        if path.is_file():
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        return {"model": self.model, "default": self.base_version(), "history": []}

    def default_version(self) -> str:
        return str(self.record()["default"])

    def _write_record(self, record: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{RECORD_FILE}.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(self.root / RECORD_FILE)

    def previous_version(self) -> str | None:
        """The default before the current one (what rollback returns to), or None."""
        history = self.record()["history"]
        return str(history[-1]["from"]) if history else None

    def plan_promotion(self, version: str) -> dict[str, Any]:
        """Check a promotion of ``version`` (its archive and passed gate report); the report."""
        if version == self.default_version():
            raise PromotionError(f"{self.model} {version} is already the default")
        if not self.archive(version).is_file():
            raise PromotionError(f"{self.model} {version}: no archive {self.archive(version)}")
        return self.passed_report(version)

    def plan_rollback(self) -> tuple[str, str, dict[str, Any] | None]:
        """(current, target, target's gate report or None for the base version); refused without a history."""
        current, target = self.default_version(), self.previous_version()
        if target is None:
            raise PromotionError(f"{self.model}: nothing to roll back ({current} was never promoted over another)")
        report = None if target == self.base_version() else self.passed_report(target)
        return current, target, report

    def note(self, action: str, old: str, new: str, by: str, report: str | None) -> dict[str, Any]:
        """Append a switch to the record and make ``new`` the default; returns the entry."""
        record = self.record()
        entry = {
            "action": action,
            "from": old,
            "to": new,
            "by": by,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "report": report,
        }
        if action == "rollback":  # the undone promotion leaves the stack: the next rollback goes further back
            record["history"] = record["history"][:-1]
        else:
            record["history"].append(entry)
        record.setdefault("log", []).append(entry)
        record["default"] = new
        self._write_record(record)
        return entry


# -- TorchServe ----------------------------------------------------------------------------------
def _management(info_or_url: ServerInfo | str, workdir: str | os.PathLike[str] | None = None) -> tuple[str, dict]:
    if isinstance(info_or_url, ServerInfo):
        return info_or_url.management_url, info_or_url.auth("management")
    key = read_keys(workdir).management if workdir else ""
    return info_or_url, ({"Authorization": f"Bearer {key}"} if key else {})


def served_versions(
    model: str, management_url: ServerInfo | str, workdir: str | os.PathLike[str] | None = None
) -> list[str]:
    """The versions TorchServe has loaded for ``model`` (empty when it does not serve it)."""
    url, headers = _management(management_url, workdir)
    r = requests.get(f"{url}/models/{model}/all", headers=headers, timeout=10)
    if r.status_code == 404:
        return []
    r.raise_for_status()
    return [str(m["modelVersion"]) for m in r.json()]


def _register(versions: Versions, version: str, url: str, headers: dict) -> None:
    """Load ``version`` into TorchServe (one worker): the shipped version from the model store by name, a
    candidate from its archive's ``file://`` URL (TorchServe's copy in the model store removed at once)."""
    if version == versions.base_version():
        source, copy = f"{versions.model}.mar", None
    else:
        archive = versions.archive(version).resolve()
        if archive.parent.parent.name != "model_versions":  # what allowed_urls admits (config.properties)
            raise PromotionError(f"{archive}: TorchServe loads versions only from a directory named model_versions")
        source, copy = archive.as_uri(), versions.model_store / archive.name  # see the module docstring
    r = requests.post(
        f"{url}/models",
        params={"url": source, "initial_workers": "1", "synchronous": "true"},
        headers=headers,
        timeout=300,
    )
    if copy is not None:
        copy.unlink(missing_ok=True)
    if r.status_code != 200:
        raise PromotionError(f"TorchServe did not register {versions.model} {version}: HTTP {r.status_code} {r.text}")


def _pending(model: str, version: str, url: str, headers: dict) -> int:
    """Requests waiting in TorchServe's queue for one version (0 when it reports none)."""
    r = requests.get(f"{url}/models/{model}/{version}", headers=headers, timeout=10)
    r.raise_for_status()
    return sum(int(m.get("jobQueueStatus", {}).get("pendingRequests", 0)) for m in r.json())


def settle(
    versions: Versions,
    server: ServerInfo | str,
    workdir: str | os.PathLike[str] | None = None,
    demoted: str | None = None,
    grace_s: float = DRAIN_GRACE_S,
) -> list[str]:
    """After a switch: TorchServe keeps exactly the default and the rollback target loaded.

    The rollback target is registered when it is not loaded (rollback stays one ``set-default``); every other
    loaded version is unregistered (``DELETE /models/<model>/<version>``), so memory does not grow with each
    promotion. ``demoted``, the default until this switch, may still have requests in flight: it is unregistered
    only once TorchServe's queue for it is empty and ``grace_s`` more seconds have passed (a request a worker is
    running finishes on the version it started on). Returns the versions unregistered."""
    url, headers = _management(server, workdir)
    keep = {v for v in (versions.default_version(), versions.previous_version()) if v is not None}
    loaded = served_versions(versions.model, server, workdir)
    for version in sorted(keep - set(loaded)):
        if version == versions.base_version() or versions.archive(version).is_file():
            _register(versions, version, url, headers)
    removed = []
    for version in loaded:
        if version in keep:
            continue
        if version == demoted:
            deadline = time.monotonic() + 120
            while _pending(versions.model, version, url, headers) and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(grace_s)
        r = requests.delete(f"{url}/models/{versions.model}/{version}", headers=headers, timeout=120)
        if r.status_code != 200:
            raise PromotionError(
                f"TorchServe did not unregister {versions.model} {version}: HTTP {r.status_code} {r.text}"
            )
        removed.append(version)
    return removed


def switch_default(
    versions: Versions,
    version: str,
    server: ServerInfo | str,
    workdir: str | os.PathLike[str] | None = None,
) -> None:
    """Make ``version`` TorchServe's default for the model, registering it first when it is not loaded."""
    url, headers = _management(server, workdir)
    if version not in served_versions(versions.model, server, workdir):
        _register(versions, version, url, headers)
    r = requests.put(f"{url}/models/{versions.model}/{version}/set-default", headers=headers, timeout=30)
    if r.status_code != 200:
        raise PromotionError(
            f"TorchServe refused set-default {versions.model} {version}: HTTP {r.status_code} {r.text}"
        )


def restore(server: ServerInfo, model_store: str | os.PathLike[str], root: Path | None = None) -> list[str]:
    """After a TorchServe start: load each promoted default (and the version rollback returns to), make it the
    default again, and unload the shipped version when it is neither (:func:`settle`). Returns ``model=version``
    for every switch made."""
    done = []
    for model in server.models:
        versions = Versions.of(model, root, Path(model_store))
        if not (versions.root / RECORD_FILE).is_file():
            continue
        default = versions.default_version()
        if default == versions.base_version():
            continue
        switch_default(versions, default, server)
        settle(versions, server, grace_s=0)
        done.append(f"{model}={default}")
    return done
