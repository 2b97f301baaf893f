"""What the specimen conclusion's agreement checks cost and catch, measured on served cell counts.

    python -m evaluation.specimen_checks [--frames artifacts/wbc_cells/served_frames_all.json]
                                         [--out docs/results/specimen_checks]

Reads the per-frame white cells and blasts that :mod:`evaluation.cell_served` wrote for the all4 validation
frames (``python -m evaluation.cell_served --every 1 --only all4 --frames-out
artifacts/wbc_cells/served_frames_all.json --out <a scratch file>``; the card's run reads every 2nd frame):
the whole frame through the served finder and typer, and runs the portal's own checks
(:func:`portal.analyses.conclusion.check_frame` and :func:`~portal.analyses.conclusion.check_benign_frames`)
as if the frame models had called every frame right. Frames are grouped into specimens the way a lab would
send them: consecutive frames of one block (one stretch of the data set's file numbers, the closest thing
to one smear it records), ``--frames-per-specimen`` of them.

- **Cost**: the share of specimens a correct call sends to a reviewer through each check alone
  (``blasts_in_benign`` on Benign specimens, ``all_without_blasts`` on ALL specimens). A referral loses
  nothing, but a check that fires on most correct specimens stops meaning anything.
- **Catch**: the error each check exists for. ``blasts_in_benign`` catches ALL called Benign: the share of
  ALL specimens it flags were every frame called Benign, and of ALL frames were each one called Benign
  alone (a frame called Benign beside frames called ALL refers the specimen anyway: the frames disagree).
  ``all_without_blasts`` catches Benign called ALL: the share of Benign frames with no blast.

``blasts_in_benign`` is reported for the served rule and beside it the rules in :data:`RULES`, so the
trade-off is on record, on all the frames and on each half of them by index (how much the figures move).
The served rule (the acute-leukaemia line on the pooled count) was chosen after seeing these frames: its
figures here are not held out. The frame label is the only truth: the cells' own labels are not known.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Callable, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from portal.analyses.conclusion import (
    ALL_LABELS,
    ALL_WITHOUT_BLASTS,
    BENIGN,
    BLASTS_IN_BENIGN,
    FrameEvidence,
    FrameResult,
    benign_blasts_refer,
    check_benign_frames,
    check_frame,
)

__all__ = ["RULES", "specimens", "served_checks", "measure", "render", "main"]

Frame = dict[str, Any]
Rule = Callable[[Sequence[Frame]], bool]
#: Rules for ``blasts_in_benign`` side by side, each on the frames called Benign of one specimen. The one named
#: "(served)" is the portal's own check, run through :func:`served_checks`.
RULES: list[tuple[str, Rule]] = [
    ("any blast in a frame (served before)", lambda fs: any(f["blast"] >= 1 for f in fs)),
    (
        "a frame with >= 2 blasts and >= 20% of its white cells",
        lambda fs: any(benign_blasts_refer(f["blast"], f["white"]) for f in fs),
    ),
    (
        "pooled: >= 2 blasts and >= 20% of the white cells (served)",
        lambda fs: BLASTS_IN_BENIGN in served_checks(fs, BENIGN),
    ),
]


def specimens(frames: Sequence[Frame], per_specimen: int) -> list[list[Frame]]:
    """Consecutive frames of one block, ``per_specimen`` at a time (a block's last, shorter group is kept
    when it has at least two frames)."""
    out: list[list[Frame]] = []
    ordered = sorted(frames, key=lambda f: (f["block"], f["frame"]))
    for _, group in groupby(ordered, key=lambda f: f["block"]):
        g = list(group)
        for i in range(0, len(g), per_specimen):
            chunk = g[i : i + per_specimen]
            if len(chunk) >= min(2, per_specimen):
                out.append(chunk)
    return out


def served_checks(frames: Sequence[Frame], called: str | None = None) -> set[str]:
    """The codes the portal's checks raise on one specimen's ``frames``, each called ``called`` (default: its own
    class), every cell analysis done."""
    results = [
        FrameResult(
            FrameEvidence(
                image_id=i,
                name=f["frame"],
                consensus_label=called or f["class"],
                cells_done=True,
                white_cells=f["white"],
                blasts=f["blast"],
            ),
            called or f["class"],
            "consensus",
        )
        for i, f in enumerate(frames)
    ]
    return {c.code for c in [*(c for r in results for c in check_frame(r)), *check_benign_frames(results)]}


def _share(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def measure(frames: Sequence[Frame], per_specimen: int) -> dict[str, Any]:
    """Cost and catch of each check (and each rule) on ``frames``; see the module docstring."""
    groups = specimens(frames, per_specimen)
    benign_specimens = [g for g in groups if g[0]["class"] == BENIGN]
    all_specimens = [g for g in groups if g[0]["class"] in ALL_LABELS]
    benign_frames = [f for f in frames if f["class"] == BENIGN]
    all_frames = [f for f in frames if f["class"] in ALL_LABELS]

    def flagged(code: str, specimens: Sequence[Sequence[Frame]], called: str | None = None) -> float | None:
        return _share(sum(code in served_checks(g, called) for g in specimens), len(specimens))

    served = {
        "blasts_in_benign_cost": flagged(BLASTS_IN_BENIGN, benign_specimens),
        "blasts_in_benign_catch_specimens": flagged(BLASTS_IN_BENIGN, all_specimens, BENIGN),
        "blasts_in_benign_catch_frames": flagged(BLASTS_IN_BENIGN, [[f] for f in all_frames], BENIGN),
        "all_without_blasts_cost": flagged(ALL_WITHOUT_BLASTS, all_specimens),
        "all_without_blasts_catch_frames": flagged(ALL_WITHOUT_BLASTS, [[f] for f in benign_frames], ALL_LABELS[0]),
    }
    rules = [
        {
            "rule": name,
            "benign_specimens_referred": _share(sum(fires(g) for g in benign_specimens), len(benign_specimens)),
            "all_specimens_caught": _share(sum(fires(g) for g in all_specimens), len(all_specimens)),
            "all_frames_caught": _share(sum(fires([f]) for f in all_frames), len(all_frames)),
        }
        for name, fires in RULES
    ]
    return {
        "frames": {"benign": len(benign_frames), "all": len(all_frames)},
        "specimens": {"benign": len(benign_specimens), "all": len(all_specimens), "frames_per_specimen": per_specimen},
        "served_rule": served,
        "blasts_in_benign_rules": rules,
    }


def _rules_table(result: dict[str, Any]) -> list[str]:
    return [
        "| rule (frames called Benign) | Benign specimens referred | ALL specimens caught | ALL frames caught alone |",
        "|---|---|---|---|",
        *(
            f"| {r['rule']} | {r['benign_specimens_referred']} | {r['all_specimens_caught']} | "
            f"{r['all_frames_caught']} |"
            for r in result["blasts_in_benign_rules"]
        ),
    ]


def render(record: dict[str, Any]) -> str:
    """The Markdown page of one record."""
    r, s, sp = record["result"], record["result"]["served_rule"], record["result"]["specimens"]
    lines = [
        "# The specimen conclusion's agreement checks: what they cost and what they catch",
        "",
        f"Command: `{record['command']}`; {record['date']}; {record['machine']}. Cell counts: "
        f"`{record['frames_file']}`, written by `python -m evaluation.cell_served --every 1 --only all4 "
        f"--frames-out {record['frames_file']} --out <a scratch file>` (the served "
        f"finder and typer on whole all4 validation frames, {r['frames']['benign']} Benign and {r['frames']['all']} "
        "ALL). The portal's own checks (`portal.analyses.conclusion`) run as if the frame models had called every "
        f"frame right; specimens are {sp['frames_per_specimen']} consecutive frames of one block ({sp['benign']} "
        f"Benign, {sp['all']} ALL specimens; the validation set has 3 Benign blocks, so the Benign figures move a "
        "lot with a few frames).",
        "",
        "| check (served) | cost: correct specimens referred | catch: wrong calls it flags |",
        "|---|---|---|",
        f"| blasts_in_benign | {s['blasts_in_benign_cost']} of Benign specimens | "
        f"{s['blasts_in_benign_catch_specimens']} of ALL specimens, were every frame called Benign; "
        f"{s['blasts_in_benign_catch_frames']} of ALL frames, were one called Benign alone |",
        f"| all_without_blasts | {s['all_without_blasts_cost']} of ALL specimens | "
        f"{s['all_without_blasts_catch_frames']} of Benign frames, were one called ALL |",
        "",
        "Rules for blasts_in_benign side by side (the portal serves the one marked served; it was chosen after "
        "seeing these frames, so its figures are not held out):",
        "",
        *_rules_table(r),
    ]
    for half, h in record.get("halves", {}).items():
        lines += [
            "",
            f"Validation frames of {half} index ({h['frames']['benign']} Benign, {h['frames']['all']} ALL frames; "
            f"{h['specimens']['benign']} Benign, {h['specimens']['all']} ALL specimens):",
            "",
            *_rules_table(h),
        ]
    return "\n".join(lines + ["", record["notes"], ""] if record.get("notes") else lines + [""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", default="artifacts/wbc_cells/served_frames_all.json")
    p.add_argument("--frames-per-specimen", type=int, default=5)
    p.add_argument("--out", default="docs/results/specimen_checks", help="writes <out>.json and <out>.md")
    p.add_argument("--machine", default="", help="the machine, in words, for the page")
    p.add_argument("--notes", default="", help="a paragraph the page ends with")
    args = p.parse_args(argv)
    frames = json.loads(Path(args.frames).read_text())
    halves = {
        "even": [f for f in frames if f.get("index", 0) % 2 == 0],
        "odd": [f for f in frames if f.get("index", 0) % 2 == 1],
    }
    record = {
        "command": shlex.join(
            ["python", "-m", "evaluation.specimen_checks", "--frames", args.frames, "--frames-per-specimen"]
            + [str(args.frames_per_specimen), "--out", args.out, "--machine", args.machine]
        )
        + (" --notes <the page's last paragraph>" if args.notes else ""),
        "date": time.strftime("%Y-%m-%d"),
        "machine": args.machine,
        "frames_file": args.frames,
        "notes": args.notes,
        "result": measure(frames, args.frames_per_specimen),
        "halves": {k: measure(v, args.frames_per_specimen) for k, v in halves.items() if v},
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(record))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
