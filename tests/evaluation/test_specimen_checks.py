"""evaluation.specimen_checks: specimens from blocks, the portal's own rule, cost and catch."""

from __future__ import annotations

from evaluation.specimen_checks import VARIANTS, measure, render, served_checks, specimens


def _frame(block: str, n: int, cls: str, white: int, blast: int) -> dict[str, object]:
    return {"frame": f"{cls}/{block}-{n:03d}.jpg", "block": block, "class": cls, "white": white, "blast": blast}


FRAMES = [
    # Benign block b1: 5 frames, one with 2 blasts of 10 white cells; block b2: 3 frames, none
    *[_frame("b1", i, "Benign", 10, 2 if i == 2 else 0) for i in range(5)],
    *[_frame("b2", i, "Benign", 8, 0) for i in range(3)],
    # Pre block p1: 4 frames with blasts, one without
    *[_frame("p1", i, "Pre", 9, 0 if i == 0 else 6) for i in range(5)],
]


def test_specimens_are_consecutive_frames_of_one_block() -> None:
    groups = specimens(FRAMES, 2)
    assert all(len({f["block"] for f in g}) == 1 for g in groups)
    # b1: 2+2+1 (the lone last frame dropped), b2: 2+1 (dropped), p1: 2+2+1 (dropped)
    assert [len(g) for g in groups] == [2, 2, 2, 2, 2]
    assert [f["frame"] for f in groups[0]] == ["Benign/b1-000.jpg", "Benign/b1-001.jpg"]


def test_served_checks_are_the_portals_rule() -> None:
    assert served_checks(_frame("x", 0, "Benign", 10, 2), "Benign") == {"blasts_in_benign"}
    assert served_checks(_frame("x", 0, "Benign", 10, 1), "Benign") == set()  # under the line: a note
    assert served_checks(_frame("x", 0, "Benign", 10, 0), "Benign") == set()
    assert served_checks(_frame("x", 0, "Pre", 10, 0), "Pre") == {"all_without_blasts"}
    assert served_checks(_frame("x", 0, "Pre", 10, 3), "Pre") == set()


def test_the_first_variant_is_the_served_rule() -> None:
    ((name, fires),) = [v for v in VARIANTS if v[0].endswith("(served)")]
    for white in range(0, 15):
        for blast in range(0, white + 1):
            f = _frame("x", 0, "Benign", white, blast)
            assert fires(white, blast) == ("blasts_in_benign" in served_checks(f, "Benign"))


def test_cost_and_catch() -> None:
    r = measure(FRAMES, 5)
    assert r["specimens"] == {"benign": 2, "all": 1, "frames_per_specimen": 5}
    served = r["served_rule"]
    assert served["blasts_in_benign_cost"] == 0.5  # b1 referred, b2 not
    assert served["blasts_in_benign_catch"] == 0.8  # 4 of the 5 Pre frames have a blast
    assert served["all_without_blasts_cost"] == 1.0  # p1's blast-free frame refers the specimen
    assert served["all_without_blasts_catch"] == 0.875  # 7 of 8 Benign frames have no blast
    by_rule = {v["rule"]: v for v in r["blasts_in_benign_variants"]}
    assert by_rule["blasts >= 1"]["benign_specimens_referred"] == 0.5
    assert by_rule["blasts >= 3"]["benign_specimens_referred"] == 0.0
    assert by_rule["blasts >= 3"]["all_frames_caught"] == 0.8
    page = render({"command": "c", "date": "d", "machine": "m", "frames_file": "f", "notes": "", "result": r})
    assert "| blasts >= 3 | 0.0 | 0.0 | 0.8 |" in page
