"""evaluation.specimen_checks: specimens from blocks, the portal's own checks, cost and catch."""

from __future__ import annotations

from evaluation.specimen_checks import RULES, measure, render, served_checks, specimens


def _frame(block: str, n: int, cls: str, white: int, blast: int) -> dict[str, object]:
    return {"frame": f"{cls}/{block}-{n:03d}.jpg", "block": block, "class": cls, "white": white, "blast": blast}


FRAMES = [
    # Benign block b1: 5 frames of 10 white cells, one with 2 blasts (20% of its own, 4% pooled); b2: 3 frames, none
    *[_frame("b1", i, "Benign", 10, 2 if i == 2 else 0) for i in range(5)],
    *[_frame("b2", i, "Benign", 8, 0) for i in range(3)],
    # Pre block p1: 4 frames with 6 blasts of 9, one without
    *[_frame("p1", i, "Pre", 9, 0 if i == 0 else 6) for i in range(5)],
]


def test_specimens_are_consecutive_frames_of_one_block() -> None:
    groups = specimens(FRAMES, 2)
    assert all(len({f["block"] for f in g}) == 1 for g in groups)
    # b1: 2+2+1 (the lone last frame dropped), b2: 2+1 (dropped), p1: 2+2+1 (dropped)
    assert [len(g) for g in groups] == [2, 2, 2, 2, 2]
    assert [f["frame"] for f in groups[0]] == ["Benign/b1-000.jpg", "Benign/b1-001.jpg"]


def test_served_checks_are_the_portals_checks() -> None:
    one = [_frame("x", 0, "Benign", 10, 2)]
    assert served_checks(one) == {"blasts_in_benign"}
    assert served_checks([_frame("x", 0, "Benign", 10, 1)]) == set()  # under the line: a note
    # pooled: 2 blasts among 20 white cells of two Benign frames is under the line, among 10 it is on it
    assert served_checks([_frame("x", 0, "Benign", 10, 1), _frame("x", 1, "Benign", 10, 1)]) == set()
    assert served_checks([_frame("x", 0, "Benign", 5, 1), _frame("x", 1, "Benign", 5, 1)]) == {"blasts_in_benign"}
    assert served_checks([_frame("x", 0, "Pre", 10, 0)]) == {"all_without_blasts"}
    assert served_checks([_frame("x", 0, "Pre", 10, 3)]) == set()
    assert served_checks([_frame("x", 0, "Pre", 10, 3)], "Benign") == {"blasts_in_benign"}


def test_the_served_rule_is_the_portals() -> None:
    ((name, fires),) = [r for r in RULES if r[0].endswith("(served)")]
    for whites in ((10,), (4, 6), (3, 3, 9)):
        for blasts in ((0,), (1,), (2,), (1, 1), (0, 2), (1, 0, 2), (3, 0, 0)):
            fs = [_frame("x", i, "Benign", w, min(b, w)) for i, (w, b) in enumerate(zip(whites, blasts, strict=False))]
            assert fires(fs) == ("blasts_in_benign" in served_checks(fs)), fs


def test_cost_and_catch() -> None:
    r = measure(FRAMES, 5)
    assert r["specimens"] == {"benign": 2, "all": 1, "frames_per_specimen": 5}
    served = r["served_rule"]
    assert served["blasts_in_benign_cost"] == 0.0  # b1 pools 2 blasts of 50 white cells: a note, not a referral
    assert served["blasts_in_benign_catch_specimens"] == 1.0  # p1 called Benign throughout: 24 of 45
    assert served["blasts_in_benign_catch_frames"] == 0.8  # 4 of the 5 Pre frames alone
    assert served["all_without_blasts_cost"] == 1.0  # p1's blast-free frame refers the specimen
    assert served["all_without_blasts_catch_frames"] == 0.875  # 7 of 8 Benign frames have no blast
    by_rule = {v["rule"]: v for v in r["blasts_in_benign_rules"]}
    assert by_rule["any blast in a frame (served before)"]["benign_specimens_referred"] == 0.5
    assert by_rule["a frame with >= 2 blasts and >= 20% of its white cells"]["benign_specimens_referred"] == 0.5
    page = render({"command": "c", "date": "d", "machine": "m", "frames_file": "f", "notes": "", "result": r})
    assert "| pooled: >= 2 blasts and >= 20% of the white cells (served) | 0.0 | 1.0 | 0.8 |" in page
