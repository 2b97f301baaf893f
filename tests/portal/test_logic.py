"""Plain logic: consensus, image validation, outcome -> state mapping, storage names."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from PIL import Image as PILImage

from core.ensemble import Ensemble, pool
from core.registry import CLASS_NAMES, model_names
from portal.actions.outcomes import store_outcome
from portal.actions.uploads import upload_images
from portal.analyses import storage
from portal.analyses.consensus import ENSEMBLE, MAJORITY, consensus, load_ensemble
from portal.analyses.inference import Refusal, ServerError
from portal.analyses.models import Analysis
from portal.analyses.validation import validate_image_bytes
from portal.audit.models import AuditEvent
from tests.portal.conftest import smear_paths
from tests.portal.helpers import complete


@dataclass
class A:
    status: str
    label: str
    abstained: bool = False
    malignant_probability: float | None = 0.5
    probabilities: dict[str, float] = field(default_factory=dict)
    model_name: str = ""
    model_version: str = ""
    abstain_reason: str = ""


def test_consensus_needs_a_strict_majority() -> None:
    assert consensus([], ensemble=None) is None
    assert consensus([A("pending", "")], ensemble=None) is None
    c = consensus([A("done", "Pre"), A("done", "Pre"), A("done", "Pro"), A("failed", "")], ensemble=None)
    assert c is not None and c.label == "Pre" and c.agreement == "2 of 3" and c.method == MAJORITY
    tie = consensus([A("done", "Pre"), A("done", "Pre"), A("done", "Pro"), A("done", "Pro")], ensemble=None)
    assert tie is not None and tie.label is None and tie.refer and tie.reason == "no_majority"
    abst = consensus([A("done", "Pre"), A("done", "Pre", abstained=True)], ensemble=None)
    assert abst is not None and abst.label is None and abst.abstained == 1
    assert consensus(
        [A("done", "Benign", malignant_probability=0.1), A("done", "Benign", malignant_probability=0.3)], ensemble=None
    ).mean_malignant_probability == pytest.approx(0.2)


# -- the fitted ensemble --------------------------------------------------------------------------
MEMBERS = model_names()


def _ensemble(**overrides: Any) -> Ensemble:
    doc = {
        "schema_version": 1,
        "version": "1.0",
        "method": "log_linear_pool",
        "classes": list(CLASS_NAMES),
        "members": [{"name": m, "version": "1.0", "weight": 0.25} for m in MEMBERS],
        "temperature": 1.0,
        "abstain_threshold": 0.6,
        "benign_threshold": 0.9,
        "min_members": 3,
    }
    return Ensemble.from_dict(doc | overrides)


def _answer(name: str, probs: list[float], status: str = "done", version: str = "1.0") -> A:
    p = dict(zip(CLASS_NAMES, probs, strict=True))
    top = max(p, key=p.__getitem__)
    return A(status, top, False, 1 - p["Benign"], p, name, version)


def test_ensemble_consensus_pools_the_probabilities_not_the_votes() -> None:
    # three members say Pre, one says Pro: the vote and the pool agree on Pre, but the consensus's probabilities
    # are the weighted geometric mean's, not the vote shares
    rows = [_answer(m, [0.02, 0.02, 0.9, 0.06]) for m in MEMBERS[:3]] + [_answer(MEMBERS[3], [0.02, 0.02, 0.16, 0.8])]
    c = consensus(rows, ensemble=_ensemble())
    assert c is not None and c.method == ENSEMBLE and c.label == "Pre" and not c.refer and c.reason is None
    assert c.probabilities is not None and sum(c.probabilities.values()) == pytest.approx(1.0)
    expected = pool("log_linear_pool", [0.25] * 4, [[r.probabilities[k] for k in CLASS_NAMES] for r in rows], 1.0)
    assert list(c.probabilities.values()) == pytest.approx(expected) and c.probabilities["Pre"] != pytest.approx(0.75)
    assert c.members_used == tuple(MEMBERS) and c.members_missing == () and c.ensemble_version == "1.0"
    assert c.malignant_probability == pytest.approx(1 - c.probabilities["Benign"])
    assert c.votes == {"Pre": 3, "Pro": 1} and c.agreement == "3 of 4"


# -- the consensus rules (portal.analyses.consensus's docstring), one test each ---------------------------------
def test_rule_nothing_finished_gives_no_consensus() -> None:
    assert consensus([], ensemble=_ensemble()) is None
    assert consensus([A("pending", ""), A("failed", "")], ensemble=_ensemble()) is None


def test_rule_a_refusal_refers_whatever_the_others_said() -> None:
    rows = [_answer(m, [0.01, 0.97, 0.01, 0.01]) for m in MEMBERS[:3]]
    c = consensus([*rows, A("rejected", "", model_name=MEMBERS[3])], ensemble=_ensemble())
    assert c is not None and c.refer and c.reason == "model_refused" and c.refer_text == "a model refused the image"


def test_rule_an_out_of_distribution_abstention_refers_whatever_the_others_said() -> None:
    rows = [_answer(m, [0.01, 0.97, 0.01, 0.01]) for m in MEMBERS[:3]]
    ood = _answer(MEMBERS[3], [0.01, 0.97, 0.01, 0.01])
    ood.abstained, ood.label, ood.abstain_reason = True, "", "out_of_distribution"
    for ens in (_ensemble(), None):
        c = consensus([*rows, ood], ensemble=ens)
        assert c is not None and c.refer and c.reason == "out_of_distribution" and c.abstained == 1
        assert "out of distribution" in c.refer_text
    # another abstention reason is not a referral by itself: the abstainer still ranks Early first (rule 5)
    ood.abstain_reason = "low_confidence"
    c = consensus([*rows, ood], ensemble=_ensemble())
    assert c is not None and c.label == "Early" and c.agreement == "4 of 4, 1 of them abstaining"


def test_rule_the_ensemble_keeps_its_fitted_thresholds() -> None:
    # every model labels Benign, but the pooled P(Benign) 0.85 is not above the ensemble's 0.9: refer
    c = consensus([_answer(m, [0.85, 0.05, 0.05, 0.05]) for m in MEMBERS], ensemble=_ensemble())
    assert c is not None and c.refer and c.reason == "benign_not_confirmed" and c.votes == {"Benign": 4}


def test_rule_no_label_from_a_minority() -> None:
    # two members say Early weakly, two say Pro strongly: the pool says Pro, but only 2 of 4 models do
    rows = [
        _answer(MEMBERS[0], [0.05, 0.50, 0.05, 0.40]),
        _answer(MEMBERS[1], [0.05, 0.50, 0.05, 0.40]),
        _answer(MEMBERS[2], [0.01, 0.04, 0.01, 0.94]),
        _answer(MEMBERS[3], [0.01, 0.04, 0.01, 0.94]),
    ]
    assert consensus(rows, ensemble=None).label is None  # the vote: 2 against 2
    pooled = _ensemble().combine({m: ("1.0", r.probabilities) for m, r in zip(MEMBERS, rows, strict=True)})
    assert pooled is not None and pooled.label == "Pro"  # what the ensemble alone would answer
    c = consensus(rows, ensemble=_ensemble())
    assert c is not None and c.method == ENSEMBLE and c.refer and c.reason == "no_majority"
    assert c.agreement == "no consensus" and c.probabilities is not None
    # 2 answering Early and 2 abstaining that rank another class first: 2 of 4, no consensus
    early = [_answer(m, [0.02, 0.9, 0.04, 0.04]) for m in MEMBERS[:2]]
    elsewhere = [
        A("done", "", True, 0.9, {"Benign": 0.1, "Early": 0.2, "Pre": 0.5, "Pro": 0.2}, m, "1.0") for m in MEMBERS[2:]
    ]
    c = consensus([*early, *elsewhere], ensemble=_ensemble())
    assert c is not None and c.refer and c.reason == "no_majority" and c.abstained == 2
    # 3 of 4 answering is a majority
    c = consensus([*early, _answer(MEMBERS[2], [0.02, 0.9, 0.04, 0.04]), elsewhere[1]], ensemble=_ensemble())
    assert c is not None and c.label == "Early" and c.agreement == "3 of 4"


def test_rule_an_abstainer_stands_behind_its_first_class_but_two_must_answer() -> None:
    unsure = [  # abstained under their own thresholds, Early their most probable class
        A("done", "", True, 0.9, {"Benign": 0.1, "Early": 0.5, "Pre": 0.2, "Pro": 0.2}, m, "1.0", "low_confidence")
        for m in MEMBERS
    ]
    early = [_answer(m, [0.02, 0.9, 0.04, 0.04]) for m in MEMBERS]
    pro = _answer(MEMBERS[3], [0.01, 0.04, 0.01, 0.94])
    # 2 answering Early, a third ranking Early first under its threshold, the fourth answering Pro: 3 of 4
    c = consensus([*early[:2], unsure[2], pro], ensemble=_ensemble())
    assert c is not None and c.label == "Early" and c.votes == {"Early": 2, "Pro": 1}
    assert c.ranked_first == {"Early": 3, "Pro": 1} and c.agreement == "3 of 4, 1 of them abstaining"
    for ens in (_ensemble(), None):  # the majority vote without an ensemble applies the same rule
        c = consensus([*early[:2], *unsure[2:]], ensemble=ens)
        assert c is not None and c.label == "Early" and c.agreement == "4 of 4, 2 of them abstaining"
        # one answer is not enough, however many rank it first
        c = consensus([early[0], *unsure[1:]], ensemble=ens)
        assert c is not None and c.refer and c.reason == "no_majority" and c.ranked_first == {"Early": 4}
    # an unconfirmed Benign ranks Benign first; the ensemble's own Benign threshold still decides Benign
    benign = [_answer(m, [0.97, 0.01, 0.01, 0.01]) for m in MEMBERS[:2]]
    leans_benign = {"Benign": 0.9, "Early": 0.05, "Pre": 0.03, "Pro": 0.02}
    not_confirmed = [A("done", "", True, 0.1, leans_benign, m, "1.0", "benign_not_confirmed") for m in MEMBERS[2:]]
    c = consensus([*benign, *not_confirmed], ensemble=_ensemble())
    assert c is not None and c.label == "Benign" and c.benign_confirmed and c.agreement.startswith("4 of 4")
    # an out-of-distribution abstention ranks nothing: it refers (rule 3) before rule 5 is reached
    ood = A("done", "", True, 0.9, dict(unsure[0].probabilities), MEMBERS[3], "1.0", "out_of_distribution")
    c = consensus([*early[:3], ood], ensemble=_ensemble())
    assert c is not None and c.reason == "out_of_distribution" and c.ranked_first == {"Early": 3}
    # the earlier rule (answers only), kept to measure the difference: 2 answering of 4 refers
    c = consensus([*early[:2], *unsure[2:]], ensemble=_ensemble(), rank_abstainers=False)
    assert c is not None and c.refer and c.reason == "no_majority"


def test_ensemble_consensus_refers_an_unconfirmed_benign_and_says_why() -> None:
    rows = [_answer(m, [0.85, 0.05, 0.05, 0.05]) for m in MEMBERS]
    c = consensus(rows, ensemble=_ensemble())  # P(Benign) 0.85 <= 0.9
    assert c is not None and c.label is None and c.refer and c.reason == "benign_not_confirmed"
    assert not c.benign_confirmed and c.votes == {"Benign": 4}
    sure = consensus([_answer(m, [0.97, 0.01, 0.01, 0.01]) for m in MEMBERS], ensemble=_ensemble())
    assert sure is not None and sure.label == "Benign" and sure.benign_confirmed
    unsure = consensus([_answer(m, [0.4, 0.3, 0.2, 0.1]) for m in MEMBERS], ensemble=_ensemble())
    assert unsure is not None and unsure.label is None and unsure.reason == "low_confidence"


def test_ensemble_consensus_with_missing_members() -> None:
    rows = [_answer(m, [0.01, 0.01, 0.97, 0.01]) for m in MEMBERS[:3]]
    c = consensus([*rows, A("failed", "", model_name=MEMBERS[3])], ensemble=_ensemble())
    assert c is not None and c.method == ENSEMBLE and c.label == "Pre" and c.members_missing == (MEMBERS[3],)
    # another version than the fitted one counts as missing: two usable members < min_members -> majority vote
    old = [*rows[:2], _answer(MEMBERS[2], [0.01, 0.01, 0.97, 0.01], version="0.9")]
    m = consensus(old, ensemble=_ensemble())
    assert m is not None and m.method == MAJORITY and m.label == "Pre" and m.agreement == "3 of 3"


def test_the_shipped_ensemble_is_the_default() -> None:
    load_ensemble.cache_clear()
    shipped = load_ensemble()
    assert shipped is not None and [m.name for m in shipped.members] == MEMBERS
    rows = [_answer(m.name, [0.001, 0.001, 0.997, 0.001], version=m.version) for m in shipped.members]
    c = consensus(rows)
    assert c is not None and c.method == ENSEMBLE and c.label == "Pre"


def _encode(fmt: str, size: tuple[int, int] = (100, 80)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, (10, 20, 30)).save(buf, fmt)
    return buf.getvalue()


def _multipage_tiff() -> bytes:
    buf = io.BytesIO()
    frames = [PILImage.new("RGB", (100, 80), (i, 0, 0)) for i in (10, 20)]
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "ctype"), [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("BMP", "image/bmp"), ("TIFF", "image/tiff")]
)
def test_accepted_formats(fmt: str, ctype: str) -> None:
    v = validate_image_bytes(f"x.{fmt.lower()}", _encode(fmt))
    assert (v.content_type, v.width, v.height) == (ctype, 100, 80)


def test_real_smear_is_accepted() -> None:
    path = smear_paths(1)[0]
    v = validate_image_bytes(path.name, path.read_bytes())
    assert v.format == "JPEG" and v.width >= 224


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "empty"),
        (b"GIF89a garbage", "not_an_image"),
        (_encode("GIF"), "not_an_image"),
        (_encode("PNG", (30, 300)), "image_too_small"),
        (_multipage_tiff(), "not_an_image"),  # refused by the models too: the same decoder decides
    ],
)
def test_refused_uploads(payload: bytes, code: str) -> None:
    with pytest.raises(ValidationError) as err:
        validate_image_bytes("f", payload)
    assert err.value.code == code


def test_size_limit(settings: Any) -> None:
    settings.PORTAL_MAX_UPLOAD_BYTES = 100
    with pytest.raises(ValidationError) as err:
        validate_image_bytes("big.png", _encode("PNG"))
    assert err.value.code == "image_too_large"


def test_storage_refuses_foreign_names() -> None:
    for bad in ["../etc/passwd", "images/../../x", "images/", "other/abc.png", "images/.hidden"]:
        with pytest.raises(ValueError):
            storage.path_for(bad)


@pytest.mark.django_db
def test_outcomes_map_to_states(technologist: Any, specimen: Any, settings: Any) -> None:
    path = smear_paths(1)[0]
    image = upload_images(
        technologist, specimen, [validate_image_bytes(path.name, path.read_bytes())], list(settings.PORTAL_MODELS)
    )[0]
    a, b, c, d = image.analyses.order_by("model_name")
    assert store_outcome(a.pk, Refusal("not_a_blood_smear", "score 0.1 < 0.5")) == "rejected"
    assert store_outcome(b.pk, ServerError("HTTP 503")) == "failed"
    complete(d, "Benign")
    a, b, c, d = Analysis.objects.filter(image=image).order_by("model_name")
    assert (a.status, a.error_code, a.error_message) == ("rejected", "not_a_blood_smear", "score 0.1 < 0.5")
    assert (b.status, b.error_message) == ("failed", "HTTP 503")
    assert (c.status, c.stage, c.attempts) == ("pending", "queued", 0)
    assert (d.status, d.label, d.latency_ms) == ("done", "Benign", 42.0)
    assert d.heatmap_name.startswith("heatmaps/") and storage.read(d.heatmap_name).startswith(b"\x89PNG")
    # A final analysis is never stored twice: a second outcome (a job delivered twice) is dropped.
    assert store_outcome(d.pk, Refusal("not_a_blood_smear", "late")) is None
    assert store_outcome(a.pk, ServerError("late")) is None
    d.refresh_from_db()
    assert (d.status, d.label) == ("done", "Benign")
    assert AuditEvent.objects.filter(action="analysis.complete", object_id=str(d.pk)).count() == 1
