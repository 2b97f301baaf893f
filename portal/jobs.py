"""The inference queue: one django-q2 job per (image, model), run by worker processes.

Why django-q2 (docs/guides/jobs.md compares the alternatives): its ORM broker keeps the queue in the
portal's own database, so `make run` needs no extra server, an upload commits its analyses and their
jobs in one transaction (nothing accepted can lack its job), and scaling out is more
``manage.py qcluster`` processes on any host that reaches the database. Its cluster restarts a
worker process that dies, and a job that is not acknowledged within ``Q_CLUSTER["retry"]`` seconds
(its worker was killed) is delivered again; the lease below makes the second delivery safe.

Life of a job (:func:`run_analysis`):

1. claim the analysis (a short lease, ``PORTAL_JOB_LEASE_S``, shorter than the broker's redelivery
   time, so a dead worker's job can always be claimed again); a final analysis is skipped, so a job
   delivered twice stores one result (:func:`portal.actions.store_outcome` checks again under a row
   lock);
2. one TorchServe call (prediction + heatmap);
3. done / rejected are stored; a server error (5xx, timeout) is retried with exponential backoff up
   to ``PORTAL_MAX_ATTEMPTS`` attempts, then failed; an unreachable model server is waited for
   (stage *waiting*, backoff capped at ``PORTAL_RETRY_MAX_DELAY_S``) up to ``PORTAL_WAIT_GIVE_UP_S``.
   A retry is a new job written in the same transaction as the analysis's new state.

:func:`run_cell_analysis` runs the cell model's job for one image (a CellAnalysis) the same way:
same lease, retries, waiting and failure states; its outcome is stored by
:func:`portal.actions.store_cell_outcome`.

:func:`sweep` (scheduled every minute in the cluster) re-queues any pending analysis without a
queued job (a job dropped after repeated crashes, a queue row deleted by hand) and removes stored
files that no row references.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.brokers import get_broker
from django_q.models import OrmQ
from django_q.signing import BadSignature, SignedPackage
from django_q.tasks import async_task

from portal import actions
from portal.analyses import storage
from portal.analyses.inference import (
    CellPrediction,
    ModelClient,
    Prediction,
    Refusal,
    ServerError,
    Unreachable,
)
from portal.analyses.models import Analysis, CellAnalysis, Image, QueuedJob

__all__ = [
    "CELL_TASK",
    "TASK",
    "enqueue",
    "enqueue_cells",
    "queued_analysis_ids",
    "queued_cell_analysis_ids",
    "run_analysis",
    "run_cell_analysis",
    "run_queued",
    "sweep",
    "worker_id",
]

log = logging.getLogger("portal.jobs")

TASK = "portal.jobs.run_analysis"
CELL_TASK = "portal.jobs.run_cell_analysis"

_J = TypeVar("_J", bound=QueuedJob)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def enqueue(analysis_ids: Iterable[int]) -> None:
    """One job per analysis. Call inside the transaction that creates or changes the analyses:
    with the ORM broker the job rows commit (or roll back) with them."""
    for pk in analysis_ids:
        async_task(TASK, pk, task_name=f"analysis-{pk}")


def enqueue_cells(cell_analysis_ids: Iterable[int]) -> None:
    """One job per cell analysis (as :func:`enqueue`)."""
    for pk in cell_analysis_ids:
        async_task(CELL_TASK, pk, task_name=f"cells-{pk}")


def _enqueuer(model: type[QueuedJob]) -> Callable[[Iterable[int]], None]:
    """How jobs of this kind are queued (the cell analyses have their own task)."""
    return enqueue_cells if model is CellAnalysis else enqueue


def _store(model: type[QueuedJob]) -> Callable[[int, Any], str | None]:
    """Where the final outcome of this kind of job is stored (portal.actions)."""
    return actions.store_cell_outcome if model is CellAnalysis else actions.store_outcome


def _backoff(n: int) -> float:
    """Seconds before retry ``n`` (1, 2, ...): exponential from PORTAL_RETRY_BASE_S, capped."""
    return float(min(settings.PORTAL_RETRY_MAX_DELAY_S, settings.PORTAL_RETRY_BASE_S * 2 ** max(0, n - 1)))


def _claim(model: type[_J], analysis_id: int) -> _J | str:
    """Lease a pending analysis for this worker; else why not: "final", "held" or "missing"."""
    now = timezone.now()
    with transaction.atomic():
        analysis = model._default_manager.select_for_update().filter(pk=analysis_id).first()
        if analysis is None:
            return "missing"
        if analysis.is_final:
            return "final"
        if analysis.locked_until and analysis.locked_until > now:
            return "held"
        analysis.locked_until = now + timedelta(seconds=settings.PORTAL_JOB_LEASE_S)
        analysis.claimed_by = worker_id()[:80]
        if analysis.stage != Analysis.Stage.WAITING:  # keep "waiting since" while probing
            analysis.stage, analysis.stage_since = Analysis.Stage.RUNNING, now
        analysis.save(update_fields=["locked_until", "claimed_by", "stage", "stage_since"])
    return analysis


def _defer(model: type[QueuedJob], analysis_id: int, outcome: ServerError | Unreachable) -> str:
    """A transient outcome: record it and queue the retry in one transaction, or fail for good."""
    now = timezone.now()
    store = _store(model)
    with transaction.atomic():
        analysis = model._default_manager.select_for_update().get(pk=analysis_id)
        if analysis.is_final:
            return analysis.status
        analysis.locked_until = None
        analysis.error_message = outcome.message
        if isinstance(outcome, ServerError):
            analysis.attempts += 1
            if analysis.attempts >= settings.PORTAL_MAX_ATTEMPTS:
                analysis.save(update_fields=["attempts", "locked_until", "error_message"])
                final = store(analysis_id, outcome)
                return final or "failed"
            analysis.error_code = "server_error"
            analysis.stage, analysis.stage_since = Analysis.Stage.RETRYING, now
            analysis.waiting_since = None
            delay = _backoff(analysis.attempts)
        else:
            waiting_since = analysis.waiting_since or now
            if (now - waiting_since).total_seconds() > settings.PORTAL_WAIT_GIVE_UP_S:
                analysis.save(update_fields=["locked_until", "error_message"])
                final = store(
                    analysis_id,
                    ServerError(
                        f"the model server was unreachable for more than {settings.PORTAL_WAIT_GIVE_UP_S} s "
                        f"({outcome.message})"
                    ),
                )
                return final or "failed"
            analysis.error_code = "unreachable"
            if analysis.stage != Analysis.Stage.WAITING:
                analysis.stage, analysis.stage_since = Analysis.Stage.WAITING, now
            analysis.waiting_since = waiting_since
            # back off in proportion to the outage so far: 1 s, 2 s, 4 s, ... up to the cap
            waited = (now - waiting_since).total_seconds()
            delay = min(settings.PORTAL_RETRY_MAX_DELAY_S, max(settings.PORTAL_RETRY_BASE_S, waited / 2))
        analysis.next_attempt_at = now + timedelta(seconds=delay)
        analysis.save()
        _enqueuer(model)([analysis_id])
    return "pending"


def _run(model: type[QueuedJob], analysis_id: int, call: Callable[[ModelClient, QueuedJob, bytes], Any]) -> str:
    """Claim, call the model server once, store the outcome once (or defer it). Returns what happened."""
    store = _store(model)
    claimed = _claim(model, analysis_id)
    if claimed == "held":
        # Another delivery of this job is running, or its worker died and the lease has not run out
        # yet: wait a little, then keep the job alive rather than drop it; the next delivery decides.
        lease = model._default_manager.filter(pk=analysis_id).values_list("locked_until", flat=True).first()
        if lease is not None:
            time.sleep(max(0.0, min((lease - timezone.now()).total_seconds(), settings.PORTAL_RETRY_MAX_DELAY_S)))
        with transaction.atomic():
            _enqueuer(model)([analysis_id])
        return "requeued"
    if isinstance(claimed, str):
        return claimed
    analysis = claimed
    if analysis.next_attempt_at:
        wait = (analysis.next_attempt_at - timezone.now()).total_seconds()
        if wait > 0:
            time.sleep(min(wait, settings.PORTAL_RETRY_MAX_DELAY_S))
    try:
        data = storage.read(analysis.image.storage_name)  # type: ignore[attr-defined]
    except OSError as exc:
        return store(analysis_id, ServerError(f"stored image unreadable: {exc}")) or "final"
    try:
        outcome = call(ModelClient(), analysis, data)
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the analysis pending forever
        log.exception("%s %s: unexpected error calling the model server", model.__name__, analysis_id)
        outcome = ServerError(f"internal error: {exc.__class__.__name__}")
    if isinstance(outcome, Prediction | CellPrediction | Refusal):
        return store(analysis_id, outcome) or "final"
    return _defer(model, analysis_id, outcome)


def run_analysis(analysis_id: int) -> str:
    """The job: one TorchServe call for one analysis, its outcome stored once. Returns what happened."""
    return _run(Analysis, analysis_id, lambda client, a, data: client.analyze(a.model_name, data))


def run_cell_analysis(cell_analysis_id: int) -> str:
    """The cell job: the cell model on one image (cells and annotated image), stored once."""
    return _run(CellAnalysis, cell_analysis_id, lambda client, a, data: client.cells(a.model_name, data))


def _queued_ids(func: str) -> set[int]:
    ids: set[int] = set()
    for payload in OrmQ.objects.using(settings.Q_CLUSTER["orm"]).values_list("payload", flat=True):
        try:
            task = SignedPackage.loads(payload)
        except (BadSignature, TypeError, ValueError):
            continue
        if task.get("func") == func and task.get("args"):
            ids.add(int(task["args"][0]))
    return ids


def queued_analysis_ids() -> set[int]:
    """Analyses that have a job in the queue (waiting or being run)."""
    return _queued_ids(TASK)


def queued_cell_analysis_ids() -> set[int]:
    """Cell analyses that have a job in the queue (waiting or being run)."""
    return _queued_ids(CELL_TASK)


def sweep(orphan_grace_s: float | None = None) -> dict[str, int]:
    """Safety net: re-queue pending analyses without a job; delete files no row references.

    ``orphan_grace_s`` (default PORTAL_ORPHAN_GRACE_S) spares files younger than that, which may
    belong to an upload whose transaction has not committed yet.
    """
    grace = settings.PORTAL_ORPHAN_GRACE_S if orphan_grace_s is None else orphan_grace_s
    now = timezone.now()
    requeued: list[int] = []
    for model, task in ((Analysis, TASK), (CellAnalysis, CELL_TASK)):
        stale = list(
            model._default_manager.filter(status=QueuedJob.Status.PENDING)
            .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
            .exclude(pk__in=_queued_ids(task))
            .values_list("pk", flat=True)
        )
        if stale:
            with transaction.atomic():
                _enqueuer(model)(stale)
            log.warning("sweep: re-queued %d pending %s that had no job: %s", len(stale), model.__name__, stale[:20])
        requeued += stale
    referenced = set(Image.objects.values_list("storage_name", flat=True))
    referenced |= set(Analysis.objects.exclude(heatmap_name="").values_list("heatmap_name", flat=True))
    referenced |= set(CellAnalysis.objects.exclude(annotated_name="").values_list("annotated_name", flat=True))
    removed = 0
    for name, mtime in storage.list_files():
        if name in referenced or time.time() - mtime <= grace:
            continue
        # re-check against the database right before deleting: an upload may just have committed
        in_use = (
            Image.objects.filter(storage_name=name).exists()
            or Analysis.objects.filter(heatmap_name=name).exists()
            or CellAnalysis.objects.filter(annotated_name=name).exists()
        )
        if not in_use:
            storage.delete(name)
            removed += 1
    if removed:
        log.warning("sweep: removed %d stored files that no row references", removed)
    return {"requeued": len(requeued), "orphans_removed": removed}


def run_queued(max_jobs: int | None = None, idle_s: float = 0.0) -> dict[str, int]:
    """Run queued jobs in this process, without a cluster (tests, one-off catch-up from a shell or cron).

    Stops when the queue has been empty for ``idle_s`` seconds or after ``max_jobs`` jobs. Returns a
    count per job result.
    """
    broker = get_broker()
    counts: dict[str, int] = {}
    done = 0
    idle_since = time.monotonic()
    while max_jobs is None or done < max_jobs:
        try:
            batch = broker.dequeue() or []
        except DatabaseError:
            log.exception("run_queued: the queue is unreachable")
            break
        if not batch:
            if time.monotonic() - idle_since >= idle_s:
                break
            continue
        for ack_id, payload in batch:
            task: dict[str, Any] = SignedPackage.loads(payload)
            func = task["func"]
            result = (import_string(func) if isinstance(func, str) else func)(*task["args"], **task["kwargs"])
            broker.acknowledge(ack_id)
            counts[str(result)] = counts.get(str(result), 0) + 1
            done += 1
        idle_since = time.monotonic()
    return counts
