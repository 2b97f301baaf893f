"""The pipeline's retries are django-q schedules, not sleeping workers; stored files go with their rows."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_q.models import OrmQ, Schedule

from portal import jobs
from portal.actions.outcomes import store_outcome
from portal.actions.uploads import upload_images
from portal.analyses import storage
from portal.analyses.models import Analysis
from tests.portal.conftest import smear_paths, validated
from tests.portal.helpers import prediction

pytestmark = pytest.mark.django_db

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: connection refused


def _analysis(technologist: Any, specimen: Any, settings: Any) -> Analysis:
    settings.TORCHSERVE_URL = UNREACHABLE
    (image,) = upload_images(technologist, specimen, validated(smear_paths(1)), [settings.PORTAL_MODELS[0]])
    return image.analyses.get()


def test_a_retry_due_later_is_a_schedule_that_the_sweep_leaves_alone(
    technologist: Any, specimen: Any, settings: Any
) -> None:
    settings.PORTAL_RETRY_BASE_S, settings.PORTAL_RETRY_MAX_DELAY_S = 5, 8
    analysis = _analysis(technologist, specimen, settings)
    started = time.monotonic()
    assert jobs.run_queued(max_jobs=1) == {"pending": 1}
    assert time.monotonic() - started < 4  # the worker did not wait out the 5 s backoff
    analysis.refresh_from_db()
    assert (analysis.stage, analysis.error_code) == ("waiting", "unreachable")
    retry = Schedule.objects.get(name=f"retry analysis-{analysis.pk}")
    assert (retry.func, retry.args, retry.schedule_type) == (jobs.TASK, str(analysis.pk), Schedule.ONCE)
    assert analysis.next_attempt_at is not None and retry.next_run == analysis.next_attempt_at > timezone.now()
    assert not OrmQ.objects.exists()  # nothing queued until it is due
    assert jobs.queued_analysis_ids() == {analysis.pk}
    assert jobs.sweep()["requeued"] == 0
    # due now (as the cluster's scheduler would find it): run_queued queues it, the job runs, waits again
    past = timezone.now() - timedelta(seconds=1)
    Schedule.objects.filter(pk=retry.pk).update(next_run=past)
    Analysis.objects.filter(pk=analysis.pk).update(next_attempt_at=past)
    assert jobs.run_queued(max_jobs=1) == {"pending": 1}
    assert Schedule.objects.get(name=f"retry analysis-{analysis.pk}").next_run > timezone.now()  # one, later


def test_a_job_delivered_early_or_during_a_lease_is_scheduled_again_without_waiting(
    technologist: Any, specimen: Any, settings: Any
) -> None:
    analysis = _analysis(technologist, specimen, settings)
    lease_end = timezone.now() + timedelta(seconds=20)
    Analysis.objects.filter(pk=analysis.pk).update(locked_until=lease_end)
    started = time.monotonic()
    assert jobs.run_analysis(analysis.pk) == "requeued"
    assert Schedule.objects.get(name=f"retry analysis-{analysis.pk}").next_run == lease_end
    due = timezone.now() + timedelta(seconds=30)
    Analysis.objects.filter(pk=analysis.pk).update(locked_until=None, next_attempt_at=due)
    assert jobs.run_analysis(analysis.pk) == "requeued"
    assert time.monotonic() - started < 2
    assert Schedule.objects.get(name=f"retry analysis-{analysis.pk}").next_run == due  # the same one, moved
    analysis.refresh_from_db()
    assert (analysis.status, analysis.stage, analysis.attempts) == ("pending", "queued", 0)


def test_stored_files_are_removed_unless_their_transaction_commits(
    settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with pytest.raises(RuntimeError), storage.files_with_rows(("heatmaps", b"png", "png")) as files:
        (lost,) = files.names
        assert storage.path_for(lost).exists()
        raise RuntimeError("the rows could not be written")
    assert not storage.path_for(lost).exists()
    files_and_rows = storage.files_with_rows(("heatmaps", b"png", "png"), ("heatmaps", b"png", "png"))
    with django_capture_on_commit_callbacks(execute=True), files_and_rows as files:
        kept, unused = files.names
        files.discard(unused)
    assert storage.path_for(kept).exists() and not storage.path_for(unused).exists()


def test_a_second_outcome_drops_its_heatmap_on_commit(
    technologist: Any, specimen: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    analysis = _analysis(technologist, specimen, settings)
    assert store_outcome(analysis.pk, prediction()) == "done"
    with django_capture_on_commit_callbacks(execute=True):
        assert store_outcome(analysis.pk, prediction()) is None
    analysis.refresh_from_db()
    assert {name for name, _ in storage.list_files() if name.startswith("heatmaps/")} == {analysis.heatmap_name}
