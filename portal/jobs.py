"""The inference pipeline: the one module that owns a job's life, from enqueue to its stored outcome.

One django-q2 job per (image, model) and one per image for the cell model, run by worker processes.
Why django-q2 (docs/guides/jobs.md compares the alternatives): its ORM broker keeps the queue in the
portal's own database, so `make run` needs no extra server, an upload commits its analyses and their
jobs in one transaction (nothing accepted can lack its job), and scaling out is more
``manage.py qcluster`` processes on any host that reaches the database. Its cluster restarts a
worker process that dies, and a job that is not acknowledged within ``Q_CLUSTER["retry"]`` seconds
(its worker was killed) is delivered again; the lease below makes the second delivery safe.

Life of a job (:func:`run_analysis`, :func:`run_cell_analysis`):

1. enqueue (:func:`enqueue`, :func:`enqueue_cells`), inside the transaction that creates the analyses
   (portal.actions.uploads);
2. claim the analysis (a short lease, ``PORTAL_JOB_LEASE_S``, shorter than the broker's redelivery
   time, so a dead worker's job can always be claimed again); a final analysis is skipped, so a job
   delivered twice stores one result;
3. one model server call (prediction + heatmap, or the cells and the annotated image);
4. store: done / rejected are stored by portal.actions.outcomes (which checks again under a row lock
   that the analysis is still pending: one result, one audit row);
5. retry: a server error (5xx, timeout) is retried with exponential backoff up to
   ``PORTAL_MAX_ATTEMPTS`` attempts, then failed; an unreachable model server is waited for (stage
   *waiting*, backoff capped at ``PORTAL_RETRY_MAX_DELAY_S``) up to ``PORTAL_WAIT_GIVE_UP_S``. A retry
   is written in the same transaction as the analysis's new state: a new job when it is due at once,
   else a one-off django-q ``Schedule`` due at the analysis's ``next_attempt_at``, which the cluster's
   scheduler turns into a job then. No worker sleeps: a job delivered while another holds the lease,
   or before its retry is due, is scheduled again for then.

:func:`sweep` (scheduled every minute in the cluster) re-queues any pending analysis with neither a
queued job nor a scheduled retry (a job dropped after repeated crashes, a row deleted by hand) and
removes stored files that no row references.

Dependencies run one way: portal.actions.uploads -> this module -> portal.actions.outcomes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.brokers import get_broker
from django_q.models import OrmQ, Schedule
from django_q.tasks import async_task

from portal.actions.outcomes import store_cell_outcome, store_outcome
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


def _task(model: type[QueuedJob]) -> str:
    return CELL_TASK if model is CellAnalysis else TASK


def _store(model: type[QueuedJob]) -> Callable[[int, Any], str | None]:
    """Where the final outcome of this kind of job is stored (portal.actions.outcomes)."""
    return store_cell_outcome if model is CellAnalysis else store_outcome


_RETRY = "retry "  # the name of a scheduled retry: "retry analysis-12", "retry cells-3"


def _retry_name(model: type[QueuedJob], analysis_id: int) -> str:
    return f"{_RETRY}{'cells' if model is CellAnalysis else 'analysis'}-{analysis_id}"


def _retries() -> QuerySet[Schedule]:
    """The retries scheduled (django_q.models.Schedule rows written by :func:`_queue_at`)."""
    return Schedule.objects.filter(name__startswith=_RETRY, func__in=(TASK, CELL_TASK))


def _queue_due_retries() -> int:
    """For :func:`run_queued`, which runs without a cluster: what the cluster's scheduler does for the
    retries, queue each one that is due (and drop its schedule). Opens a transaction (a write lock on
    SQLite, whose transactions are IMMEDIATE) only when one is due."""
    if not _retries().filter(next_run__lte=timezone.now()).exists():
        return 0
    with transaction.atomic():
        due = list(_retries().select_for_update().filter(next_run__lte=timezone.now()))
        for retry in due:
            model = CellAnalysis if retry.func == CELL_TASK else Analysis
            _queue_at(model, int(retry.args), retry.next_run)
    return len(due)


def _queue_at(model: type[QueuedJob], analysis_id: int, when: datetime) -> None:
    """The job again, at ``when``: queued now when it is due, else a one-off django-q Schedule (at most one
    per analysis) that the cluster's scheduler queues once ``when`` has passed. Call inside a transaction."""
    if when <= timezone.now():
        Schedule.objects.filter(name=_retry_name(model, analysis_id)).delete()
        _enqueuer(model)([analysis_id])
        return
    Schedule.objects.update_or_create(
        name=_retry_name(model, analysis_id),
        defaults={
            "func": _task(model),
            "args": str(analysis_id),
            "schedule_type": Schedule.ONCE,
            "repeats": -1,  # a ONCE schedule with negative repeats is deleted once it has queued its job
            "next_run": when,
        },
    )


def _backoff(n: int) -> float:
    """Seconds before retry ``n`` (1, 2, ...): exponential from PORTAL_RETRY_BASE_S, capped."""
    return float(min(settings.PORTAL_RETRY_MAX_DELAY_S, settings.PORTAL_RETRY_BASE_S * 2 ** max(0, n - 1)))


def _claim(model: type[_J], analysis_id: int) -> _J | str:
    """Lease a pending analysis for this worker; else why not: "final", "held" (another worker has the
    lease), "early" (its retry is not due yet) or "missing"."""
    now = timezone.now()
    with transaction.atomic():
        analysis = model._default_manager.select_for_update().filter(pk=analysis_id).first()
        if analysis is None:
            return "missing"
        if analysis.is_final:
            return "final"
        if analysis.locked_until and analysis.locked_until > now:
            return "held"
        if analysis.next_attempt_at and analysis.next_attempt_at > now:
            return "early"
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
        _queue_at(model, analysis_id, analysis.next_attempt_at)
    return "pending"


def _run(model: type[QueuedJob], analysis_id: int, call: Callable[[ModelClient, QueuedJob, bytes], Any]) -> str:
    """Claim, call the model server once, store the outcome once (or defer it). Returns what happened."""
    store = _store(model)
    claimed = _claim(model, analysis_id)
    if claimed in ("held", "early"):
        # Another delivery of this job is running (or its worker died and the lease has not run out yet),
        # or the job came before its retry is due: keep the job alive rather than drop it, queued again
        # for when the lease runs out or the retry is due; that delivery decides.
        with transaction.atomic():
            row = model._default_manager.select_for_update().filter(pk=analysis_id).first()
            if row is not None and not row.is_final:
                due = [t for t in (row.locked_until, row.next_attempt_at) if t]
                _queue_at(model, analysis_id, max([timezone.now(), *due]))
        return "requeued"
    if isinstance(claimed, str):
        return claimed
    analysis = claimed
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
    """The analyses with a job of ``func`` in the queue (django-q reads its own packages: OrmQ.task), or a
    retry scheduled for later."""
    ids = {
        int(job.args()[0])
        for job in OrmQ.objects.using(settings.Q_CLUSTER["orm"]).all()
        if job.func() == func and job.args()
    }
    ids.update(int(args) for args in _retries().filter(func=func).values_list("args", flat=True))
    return ids


def queued_analysis_ids() -> set[int]:
    """Analyses that have a job in the queue (waiting or being run) or a retry scheduled."""
    return _queued_ids(TASK)


def queued_cell_analysis_ids() -> set[int]:
    """Cell analyses that have a job in the queue (waiting or being run) or a retry scheduled."""
    return _queued_ids(CELL_TASK)


def sweep(orphan_grace_s: float | None = None) -> dict[str, int]:
    """Safety net: re-queue pending analyses with neither a job nor a scheduled retry; delete files no row
    references.

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

    Does for the retries what the cluster's scheduler does (queues each once it is due) and waits for
    those still to come. Stops when nothing has been queued or scheduled for ``idle_s`` seconds, or after
    ``max_jobs`` jobs. Returns a count per job result.
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
            if _queue_due_retries() or _retries().exists():
                idle_since = time.monotonic()  # a retry is queued now or still to come
            elif time.monotonic() - idle_since >= idle_s:
                break
            continue
        for ack_id, payload in batch:
            task: dict[str, Any] = OrmQ(payload=payload).task  # django-q's own reading of its package
            func = task["func"]
            result = (import_string(func) if isinstance(func, str) else func)(*task["args"], **task["kwargs"])
            broker.acknowledge(ack_id)
            counts[str(result)] = counts.get(str(result), 0) + 1
            done += 1
        idle_since = time.monotonic()
    return counts
