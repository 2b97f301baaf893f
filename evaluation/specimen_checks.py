"""What the specimen conclusion's agreement checks cost and catch, measured on served cell counts.

    python -m evaluation.specimen_checks [--frames artifacts/wbc_cells/served_frames.json]
                                         [--out docs/results/specimen_checks]

Reads the per-frame white cells and blasts that :mod:`evaluation.cell_served` wrote for the all4 validation
frames (the whole frame through the served finder and typer) and runs the portal's own rule,
:func:`portal.analyses.conclusion.check_frame`, on each frame as if the frame models had called it
right (its label). Frames are grouped into specimens the way a lab would send them: consecutive frames
of one block (one stretch of the data set's file numbers, the closest thing to one smear it records), a
specimen being ``--frames-per-specimen`` of them.

- **Cost**: the share of specimens a correct call sends to a reviewer through each check alone
  (``blasts_in_benign`` on Benign specimens, ``all_without_blasts`` on ALL specimens). A frame sent to
  a reviewer loses nothing, but a check that fires on most correct specimens stops meaning anything.
- **Catch**: the error each check exists for. ``blasts_in_benign`` catches an ALL frame the frame models
  called Benign: the share of ALL frames on which it would fire. ``all_without_blasts`` catches a Benign
  frame called ALL: the share of Benign frames with no blast.

Both are reported for the served rule and for the stricter variants listed in :data:`VARIANTS` (a
minimum blast count, a minimum blast share), so the trade-off is on record; the page says which rule
the portal serves. The frame label is the only truth: the cells' own labels are not known.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from portal.analyses.conclusion import (
    ALL_LABELS,
    ALL_WITHOUT_BLASTS,
    BENIGN,
    BENIGN_BLASTS_MIN,
    BLASTS_IN_BENIGN,
    FrameEvidence,
    FrameResult,
    check_frame,
)

__all__ = ["VARIANTS", "specimens", "served_checks", "measure", "render", "main"]

Frame = dict[str, Any]
#: Rules for ``blasts_in_benign`` measured side by side: (name, fires on a frame's white cells / blasts). The one
#: named "(served)" is the portal's (a test holds it to :func:`portal.analyses.conclusion.check_frame`); the first
#: was served before it.
VARIANTS: list[tuple[str, Callable[[int, int], bool]]] = [
    ("blasts >= 1", lambda white, blast: blast >= 1),
    ("blasts >= 2", lambda white, blast: blast >= 2),
    ("blasts >= 3", lambda white, blast: blast >= 3),
    ("blast share >= 20%", lambda white, blast: white > 0 and blast / white >= 0.2),
    (
        f"blasts >= {BENIGN_BLASTS_MIN} and share >= 20% (served)",
        lambda white, blast: blast >= 2 and blast / white >= 0.2,
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


def served_checks(frame: Frame, called: str) -> set[str]:
    """The codes the portal's rule raises on ``frame`` called ``called`` (its cell analysis done)."""
    evidence = FrameEvidence(
        image_id=0,
        name=frame["frame"],
        consensus_label=called,
        cells_done=True,
        white_cells=frame["white"],
        blasts=frame["blast"],
    )
    return {c.code for c in check_frame(FrameResult(evidence, called, "consensus"))}


def _share(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def measure(frames: Sequence[Frame], per_specimen: int) -> dict[str, Any]:
    """Cost and catch of each check (and each variant) on ``frames``; see the module docstring."""
    groups = specimens(frames, per_specimen)
    benign_specimens = [g for g in groups if g[0]["class"] == BENIGN]
    all_specimens = [g for g in groups if g[0]["class"] in ALL_LABELS]
    benign_frames = [f for f in frames if f["class"] == BENIGN]
    all_frames = [f for f in frames if f["class"] in ALL_LABELS]
    served = {
        "blasts_in_benign_cost": _share(
            sum(any(BLASTS_IN_BENIGN in served_checks(f, BENIGN) for f in g) for g in benign_specimens),
            len(benign_specimens),
        ),
        "blasts_in_benign_catch": _share(
            sum(BLASTS_IN_BENIGN in served_checks(f, BENIGN) for f in all_frames), len(all_frames)
        ),
        "all_without_blasts_cost": _share(
            sum(any(ALL_WITHOUT_BLASTS in served_checks(f, f["class"]) for f in g) for g in all_specimens),
            len(all_specimens),
        ),
        "all_without_blasts_catch": _share(
            sum(ALL_WITHOUT_BLASTS in served_checks(f, ALL_LABELS[0]) for f in benign_frames), len(benign_frames)
        ),
    }
    variants = [
        {
            "rule": name,
            "benign_specimens_referred": _share(
                sum(any(fires(f["white"], f["blast"]) for f in g) for g in benign_specimens), len(benign_specimens)
            ),
            "benign_frames_referred": _share(
                sum(fires(f["white"], f["blast"]) for f in benign_frames), len(benign_frames)
            ),
            "all_frames_caught": _share(sum(fires(f["white"], f["blast"]) for f in all_frames), len(all_frames)),
        }
        for name, fires in VARIANTS
    ]
    return {
        "frames": {"benign": len(benign_frames), "all": len(all_frames)},
        "specimens": {"benign": len(benign_specimens), "all": len(all_specimens), "frames_per_specimen": per_specimen},
        "served_rule": served,
        "blasts_in_benign_variants": variants,
    }


def render(record: dict[str, Any]) -> str:
    """The Markdown page of one record."""
    r, s, sp = record["result"], record["result"]["served_rule"], record["result"]["specimens"]
    lines = [
        "# The specimen conclusion's agreement checks: what they cost and what they catch",
        "",
        f"Command: `{record['command']}`; {record['date']}; {record['machine']}. Cell counts: "
        f"`{record['frames_file']}`, written by `python -m evaluation.cell_served` (the served finder and typer on "
        f"whole all4 validation frames, {r['frames']['benign']} Benign and {r['frames']['all']} ALL). Each frame is "
        "checked by the portal's own rule (`portal.analyses.conclusion.check_frame`) as if the frame models had "
        f"called it right; specimens are {sp['frames_per_specimen']} consecutive frames of one block "
        f"({sp['benign']} Benign, {sp['all']} ALL specimens).",
        "",
        "| check | cost: correct specimens referred | catch: wrong frame calls it flags |",
        "|---|---|---|",
        f"| blasts_in_benign (served: >= {BENIGN_BLASTS_MIN} blasts, >= 20% of the white cells) |"
        f" {s['blasts_in_benign_cost']} of Benign specimens | "
        f"{s['blasts_in_benign_catch']} of ALL frames, were they called Benign |",
        f"| all_without_blasts (served: no blast) | {s['all_without_blasts_cost']} of ALL specimens | "
        f"{s['all_without_blasts_catch']} of Benign frames, were they called ALL |",
        "",
        "Rules for blasts_in_benign side by side (the portal serves the one marked served; before, any blast "
        "referred):",
        "",
        "| rule (per frame called Benign) | Benign specimens referred | Benign frames referred | ALL frames caught |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {v['rule']} | {v['benign_specimens_referred']} | {v['benign_frames_referred']} | {v['all_frames_caught']} |"
        for v in r["blasts_in_benign_variants"]
    ]
    for half, h in record.get("halves", {}).items():
        lines += [
            "",
            f"Validation frames of {half} index ({h['frames']['benign']} Benign, {h['frames']['all']} ALL frames; "
            f"{h['specimens']['benign']} Benign specimens):",
            "",
            "| rule | Benign specimens referred | Benign frames referred | ALL frames caught |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {v['rule']} | {v['benign_specimens_referred']} | {v['benign_frames_referred']} | "
            f"{v['all_frames_caught']} |"
            for v in h["blasts_in_benign_variants"]
        ]
    return "\n".join(lines + ["", record["notes"], ""]) if record.get("notes") else "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", default="artifacts/wbc_cells/served_frames.json")
    p.add_argument("--frames-per-specimen", type=int, default=5)
    p.add_argument("--out", default="docs/results/specimen_checks", help="writes <out>.json and <out>.md")
    p.add_argument("--machine", default="", help="the machine, in words, for the page")
    p.add_argument("--notes", default="", help="a paragraph the page ends with")
    args = p.parse_args(argv)
    frames = json.loads(Path(args.frames).read_text())
    halves = {
        "even (the rule was chosen here)": [f for f in frames if f.get("index", 0) % 2 == 0],
        "odd (confirmation)": [f for f in frames if f.get("index", 0) % 2 == 1],
    }
    record = {
        "command": "python -m evaluation.specimen_checks " + " ".join(argv if argv is not None else []),
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
