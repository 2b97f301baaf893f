"""The specimen conclusion's rules (portal.analyses.conclusion), one test per rule, on plain data: no database.

Also the blast figures they read (portal.analyses.differential): the 95% Wilson interval against the exact
binomial limits (scipy), the 20% line and the target count.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from scipy.stats import beta

from core.registry import CLASS_NAMES, LEUKOCYTE_CLASSES
from portal.analyses.conclusion import (
    ALL_LABELS,
    ALL_WITHOUT_BLASTS,
    BENIGN,
    BENIGN_BLASTS_MIN,
    BLASTS_IN_BENIGN,
    CHECKS,
    FrameEvidence,
    conclude,
)
from portal.analyses.differential import (
    BLAST,
    BLAST_THRESHOLD_PERCENT,
    DEFAULT_TARGET_COUNT,
    TARGET_COUNTS,
    count_progress,
    differential,
    wilson_interval,
)


def _cells(**counts: int) -> list[Any]:
    return [SimpleNamespace(final_label=t, reviewed_label=None) for t, n in counts.items() for _ in range(n)]


def _frame(image_id: int = 1, consensus: str | None = "Pre", **kw: Any) -> FrameEvidence:
    kw.setdefault("cells_done", True)
    kw.setdefault("white_cells", 50)
    kw.setdefault("blasts", 20 if consensus in ALL_LABELS else 0)
    return FrameEvidence(image_id=image_id, name=f"f{image_id}.jpg", consensus_label=consensus, **kw)


def _conclude(frames: list[FrameEvidence], **counts: int) -> Any:
    diff = differential(_cells(**counts))
    return conclude(frames, diff, count_progress(diff.white_cells, 100))


# --- the figures ---------------------------------------------------------------------------------------


def test_one_source_of_truth_for_the_blast_type_line_and_targets() -> None:
    assert BLAST in LEUKOCYTE_CLASSES  # a white cell: in the denominator
    assert BLAST_THRESHOLD_PERCENT == 20.0 and TARGET_COUNTS == (100, 200) and DEFAULT_TARGET_COUNT == 100
    assert BENIGN == "Benign" and set(ALL_LABELS) == set(CLASS_NAMES) - {"Benign"}


def test_wilson_interval_known_values_and_edges() -> None:
    low, high = wilson_interval(20, 100)  # type: ignore[misc]
    assert (round(low, 1), round(high, 1)) == (13.3, 28.9)
    assert wilson_interval(0, 100)[0] == 0.0 and wilson_interval(100, 100)[1] == 100.0  # type: ignore[index]
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


@pytest.mark.parametrize(("n", "within"), [(100, 0.7), (200, 0.4)])
def test_wilson_is_close_to_the_exact_limits_labs_tabulate(n: int, within: float) -> None:
    """The claim in portal.analyses.differential's docstring: at 100 and 200 cells every count's Wilson limits
    lie within 0.7 / 0.4 percentage points of the exact (Clopper-Pearson) limits that Rümke's table lists."""
    worst = 0.0
    for k in range(n + 1):
        exact_low = 0.0 if k == 0 else 100 * beta.ppf(0.025, k, n - k + 1)
        exact_high = 100.0 if k == n else 100 * beta.ppf(0.975, k + 1, n - k)
        low, high = wilson_interval(k, n)  # type: ignore[misc]
        worst = max(worst, abs(low - exact_low), abs(high - exact_high))
    assert worst < within


def test_blast_line_flag_and_interval_crossing() -> None:
    at_line = differential(_cells(blast=20, lymphocyte=80))
    assert at_line.blast_percent == 20.0 and at_line.blasts_over_threshold
    assert at_line.blast_interval_crosses_threshold  # 13.3-28.9 contains 20
    assert "at or over the 20% line" in at_line.blast_text and "95% CI 13.3-28.9%" in at_line.blast_text
    under = differential(_cells(blast=19, lymphocyte=81))
    assert not under.blasts_over_threshold and "under the 20% line" in under.blast_text
    clear = differential(_cells(blast=60, lymphocyte=40))
    assert clear.blasts_over_threshold and not clear.blast_interval_crosses_threshold
    none = differential(_cells(platelet=3))
    assert none.blast_percent is None and not none.blasts_over_threshold and "no white cell" in none.blast_text
    body = at_line.as_dict()
    assert (body["blast_percent"], body["blast_interval_95"], body["blasts_over_threshold"]) == (
        20.0,
        [13.3, 28.9],
        True,
    )


def test_count_progress_towards_the_target() -> None:
    half = count_progress(50, 100)
    assert (half.reached, half.remaining, half.percent) == (False, 50, 50.0) and "50 more" in half.text
    done = count_progress(230, 200)
    assert (done.reached, done.remaining, done.percent) == (True, 0, 100.0) and "reached" in done.text
    with pytest.raises(ValueError):
        count_progress(10, 150)  # not a count labs use


# --- one rule each ---------------------------------------------------------------------------------


def test_frames_that_agree_give_the_specimen_their_label() -> None:
    c = _conclude([_frame(1), _frame(2)], blast=40, lymphocyte=60)
    assert c.label == "Pre" and not c.refer and c.checks == () and c.reasons == ()
    assert c.label_text == "Pre-B ALL" and "2 of 2 frames labelled: Pre-B ALL 2 (0 signed off, 2 by consensus)" in (
        c.frames_text
    )
    assert c.text.startswith("Pre-B ALL. 2 of 2 frames") and "Blasts 40 of 100 white cells: 40.0%" in c.text


def test_a_signed_label_overrides_the_consensus() -> None:
    c = _conclude([_frame(1, consensus="Early", signed_label="Pre"), _frame(2)], blast=40, lymphocyte=60)
    assert c.label == "Pre" and [f.source for f in c.frames] == ["signed", "consensus"]


def test_a_referred_frame_refers_the_specimen_until_signed() -> None:
    referred = _frame(2, consensus=None, refer_reason="no majority among the models", blasts=0)
    c = _conclude([_frame(1), referred], blast=40, lymphocyte=60)
    assert c.refer and [f.evidence.image_id for f in c.referred_frames] == [2]
    assert any("'f2.jpg' is referred (no consensus: no majority among the models)" in r for r in c.reasons)
    signed = _frame(2, consensus=None, signed_label="Pre", blasts=3)
    assert _conclude([_frame(1), signed], blast=40, lymphocyte=60).label == "Pre"


def test_rule_all_without_blasts_refers_and_says_why() -> None:
    c = _conclude([_frame(1, consensus="Pro", blasts=0, white_cells=12)], lymphocyte=12)
    assert c.refer and [(k.code, k.image_id) for k in c.checks] == [(ALL_WITHOUT_BLASTS, 1)]
    assert "is called Pro-B ALL but the cell analysis found no blast among its 12 white cells" in c.checks[0].text
    no_cells = _conclude([_frame(1, consensus="Early", blasts=0, cells_done=False, white_cells=0)])
    assert no_cells.checks[0].code == ALL_WITHOUT_BLASTS and "no cell analysis" in no_cells.checks[0].text
    assert CHECKS[ALL_WITHOUT_BLASTS]


def test_rule_blasts_in_a_benign_frame_refers_and_says_why() -> None:
    """At least BENIGN_BLASTS_MIN blasts making at least 20% of the white cells of the frames called Benign refer;
    fewer is a note per frame."""
    c = _conclude([_frame(1, consensus="Benign", blasts=2, white_cells=10)], blast=2, lymphocyte=8)
    assert c.refer and [(k.code, k.image_id) for k in c.checks] == [(BLASTS_IN_BENIGN, 1)]
    assert "is called Benign (hematogones) but 2 blasts were found among its 10 white cells" in c.checks[0].text
    assert BENIGN_BLASTS_MIN == 2 and "At least 2 blasts, 20% or more" in CHECKS[BLASTS_IN_BENIGN]
    # under the line: one blast (even 1 of 4, 25%), or 2 blasts making under 20% (2 of 11): a note, no referral
    for blasts, white in ((1, 4), (1, 30), (2, 11)):
        under = _conclude([_frame(1, consensus="Benign", blasts=blasts, white_cells=white)], lymphocyte=50)
        assert under.label == "Benign" and under.checks == () and under.reasons == ()
        (note,) = [n for n in under.notes if n.startswith("Frame 'f1.jpg'")]
        found = f"{blasts} blast{' was' if blasts == 1 else 's were'} found among its {white} white cells"
        assert f"is called Benign (hematogones) and {found}, under the line that refers" in note
    clean = _conclude([_frame(1, consensus="Benign", blasts=0)], lymphocyte=50)
    assert clean.label == "Benign" and clean.checks == () and not any("Frame" in n for n in clean.notes)


def test_rule_blasts_in_benign_pools_the_frames_called_benign() -> None:
    """A blast in each of two frames of 5 white cells: 2 of 10 pooled, on the line; of 10 each: 2 of 20, notes."""
    on = _conclude([_frame(i, consensus="Benign", blasts=1, white_cells=5) for i in (1, 2)], blast=2, lymphocyte=8)
    assert on.refer and [(k.code, k.image_id) for k in on.checks] == [(BLASTS_IN_BENIGN, None)]
    assert on.checks[0].text == (
        "2 frames are called Benign (hematogones) but 2 blasts were found among their 10 white cells "
        "(20.0%; in 'f1.jpg', 'f2.jpg')"
    )
    mixed = [_frame(1, consensus="Benign", blasts=2, white_cells=5), _frame(2, consensus="Benign", white_cells=5)]
    assert [k.image_id for k in _conclude(mixed, blast=2, lymphocyte=8).checks] == [1]  # one frame holds them
    under = _conclude([_frame(i, consensus="Benign", blasts=1, white_cells=10) for i in (1, 2)], lymphocyte=20)
    assert under.label == "Benign" and under.checks == ()
    assert sum("under the line that refers" in n for n in under.notes) == 2  # each frame with a blast, noted
    # a frame called ALL does not join the pool, nor does one whose cell analysis has not finished
    pre = _frame(2, consensus="Pre", blasts=9, white_cells=10)
    waiting = _frame(3, consensus="Benign", blasts=5, white_cells=5, cells_done=False)
    apart = _conclude([_frame(1, consensus="Benign", blasts=1, white_cells=10), pre, waiting], lymphocyte=20)
    assert BLASTS_IN_BENIGN not in {k.code for k in apart.checks}


def test_frames_that_disagree_refer() -> None:
    mixed = _conclude([_frame(1, consensus="Benign"), _frame(2, consensus="Pre")], blast=20, lymphocyte=80)
    assert mixed.refer and any(r.startswith("The frames disagree: Benign (hematogones) in 1") for r in mixed.reasons)
    subtypes = _conclude([_frame(1, consensus="Pre"), _frame(2, consensus="Pro")], blast=40, lymphocyte=60)
    assert subtypes.refer and any("agree on ALL but not on its subtype" in r for r in subtypes.reasons)


def test_pending_and_empty_specimens_refer() -> None:
    assert _conclude([]).reasons == ("No frame has a result yet",)
    running = _frame(1, consensus=None, pending=True, blasts=0)
    c = _conclude([running])
    assert c.refer and c.pending and c.referred_frames == () and "1 frame is still being analysed" in c.reasons
    refused = _frame(1, consensus=None, has_result=False, blasts=0)
    assert _conclude([refused]).reasons[0] == "No frame has a result yet" and _conclude([refused]).referred_frames == ()


def test_notes_do_not_refer() -> None:
    c = _conclude([_frame(1, blasts=5, white_cells=25)], blast=5, lymphocyte=20)
    assert c.label == "Pre" and c.reasons == ()
    assert any("25 of 100 white cells counted" in n for n in c.notes)  # under the target: provisional
    assert any("crosses the 20% line" in n for n in c.notes)  # 5/25 = 20%, interval 8.9-39.1


def test_as_dict_carries_everything_the_api_and_the_sign_off_keep() -> None:
    body = _conclude([_frame(1, consensus="Benign", blasts=10)], blast=2, lymphocyte=48).as_dict()
    assert body["label"] is None and body["refer"] is True and body["checks"][0]["code"] == BLASTS_IN_BENIGN
    assert body["frames"][0]["image_id"] == 1 and body["differential"]["blast_percent"] == 4.0
    assert body["target_count"] == 100 and body["target_reached"] is False and body["text"].startswith("Refer")
