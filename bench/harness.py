"""What every benchmark shares: the host's conditions, the closed-loop runner, one percentile function,
the JSON record (with its command, date and machine) and the Markdown report rendered from it.

A benchmark is a scenario (``bench/<name>.py``) that measures, builds a record (a dict that starts with
:func:`run_header`), renders Markdown from the record alone (so that a committed record renders again
into its committed page: tests/bench) and writes both with :func:`write_report` into docs/results/.
Where each report lives, and the command that writes it, is the index in docs/README.md.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from string import Template
from typing import Any

from core.host import cpu_model

__all__ = [
    "RESULTS",
    "closed_loop",
    "command_line",
    "conditions",
    "fill",
    "latency_summary",
    "level_summary",
    "machine",
    "markdown_table",
    "measured",
    "percentile",
    "run_closed_loop",
    "run_header",
    "run_interleaved_level",
    "run_paired_single",
    "write_report",
]

REPO = Path(__file__).resolve().parent.parent
#: where the generated pages and their records live (the guides are in docs/guides/)
RESULTS = REPO / "docs" / "results"
#: closed-loop levels alternate between the sides in at most this many rounds (:func:`run_interleaved_level`)
LEVEL_ROUNDS = 4
BLOCK_REQUESTS_PER_CLIENT = 3


# --- the host -----------------------------------------------------------------------------------------


def machine() -> str:
    """The machine a number was measured on, in one line: architecture, cores, platform."""
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"


def conditions(**extra: Any) -> dict[str, Any]:
    """The host's conditions before a run: CPU model, cores, the 1/5/15-minute load average; plus ``extra``
    (library versions, threads, inputs). A scenario adds ``load_avg_after`` when it is done."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_avg_before": [round(x, 2) for x in os.getloadavg()],
        **extra,
    }


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """``python -m <module> <args>``: the command a record states (``argv`` None: this process's own)."""
    return f"python -m {module} " + shlex.join(sys.argv[1:] if argv is None else argv)


def run_header(command: str) -> dict[str, Any]:
    """When and where a run was measured, and the command that measured it."""
    return {"when": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(), "cores": os.cpu_count(), "command": command}


# --- percentiles --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float, ndigits: int | None = None) -> float | None:
    """The ``q`` quantile (0..1) of ``values``, linear between the two nearest ranks (the ``inclusive``
    method of :func:`statistics.quantiles`, numpy's default), rounded to ``ndigits`` where given; None
    for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    value = xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
    return value if ndigits is None else round(value, ndigits)


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99 and the mean of ``latencies_ms``, in ms to two decimals."""
    return {
        **{f"p{round(q * 100)}": percentile(latencies_ms, q, 2) or 0.0 for q in (0.5, 0.95, 0.99)},
        "mean": round(statistics.fmean(latencies_ms), 2),
    }


# --- the runner ---------------------------------------------------------------------------------------


def closed_loop(
    call: Callable[[bytes], object], images: Sequence[bytes], concurrency: int, total: int
) -> tuple[list[float], float]:
    """``concurrency`` threads each send the next image as soon as their previous answer came back;
    returns the latencies (ms) and the wall time (s)."""
    counter = iter(range(total))
    lock = threading.Lock()
    latencies: list[float] = []

    def client() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            call(images[i % len(images)])
            dt = (time.perf_counter() - t0) * 1000.0
            with lock:
                latencies.append(dt)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0


def level_summary(concurrency: int, latencies: list[float], wall: float) -> dict[str, Any]:
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "images_per_s": round(len(latencies) / wall, 2),
        **latency_summary(latencies),
    }


def run_closed_loop(
    call: Callable[[bytes], object], images: Sequence[bytes], concurrency: int, total: int
) -> dict[str, Any]:
    """A closed-loop level (:func:`closed_loop`): images/s and latency percentiles."""
    return level_summary(concurrency, *closed_loop(call, images, concurrency, total))


def run_interleaved_level(
    sides: dict[str, tuple[Callable[[bytes], object], Callable[[], dict[str, float]]]],
    images: Sequence[bytes],
    concurrency: int,
    total: int,
) -> dict[str, dict[str, Any]]:
    """One closed-loop level per side, ``total`` requests each, measured in blocks that alternate between
    the sides (which goes first flips each round), so that both meet the same drift of a shared CPU.
    A block holds at least three requests per client (:data:`BLOCK_REQUESTS_PER_CLIENT`), at most
    :data:`LEVEL_ROUNDS` rounds. ``sides``: name -> (call, CPU seconds of that side's processes now, by
    process kind). Returns per side the level summary plus ``cpu_ms_per_image`` by process kind, counted
    during that side's blocks only."""
    rounds = max(1, min(LEVEL_ROUNDS, total // (BLOCK_REQUESTS_PER_CLIENT * concurrency)))
    names = list(sides)
    latencies: dict[str, list[float]] = {k: [] for k in names}
    wall = dict.fromkeys(names, 0.0)
    cpu: dict[str, dict[str, float]] = {k: {} for k in names}
    for r in range(rounds):
        block = total // rounds + (1 if r < total % rounds else 0)
        for k in names if r % 2 == 0 else names[::-1]:
            call, cpu_now = sides[k]
            c0 = cpu_now()
            lat, w = closed_loop(call, images, concurrency, block)
            for kind, seconds in cpu_now().items():
                cpu[k][kind] = cpu[k].get(kind, 0.0) + seconds - c0[kind]
            latencies[k] += lat
            wall[k] += w
    return {
        k: {**level_summary(concurrency, latencies[k], wall[k]), "rounds": rounds}
        | {"cpu_ms_per_image": {kind: round(v / total * 1000, 2) for kind, v in cpu[k].items()}}
        for k in names
    }


def run_paired_single(
    calls: dict[str, Callable[[bytes], object]], images: Sequence[bytes], pairs: int
) -> dict[str, Any]:
    """One request at a time, the sides taking turns request by request (which goes first flips every
    pair), so that both meet the same machine: on a shared CPU whose speed drifts by tens of percent
    between minutes, levels measured one after the other differ by more than the few ms compared here.
    Returns each side's percentiles and the median of the paired differences (second minus first)."""
    names = list(calls)
    latencies: dict[str, list[float]] = {k: [] for k in names}
    differences = []
    for i in range(pairs):
        raw = images[i % len(images)]
        got = {}
        for k in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            calls[k](raw)
            got[k] = (time.perf_counter() - t0) * 1000.0
        for k in names:
            latencies[k].append(got[k])
        differences.append(got[names[1]] - got[names[0]])
    return {
        "pairs": pairs,
        **{k: latency_summary(v) for k, v in latencies.items()},
        "difference_p50": round(statistics.median(differences), 2),
    }


# --- the report ---------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines: the header, its rule, then one line per row (cells as ``str`` gives them)."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


#: how a report states where and how its record was measured (the fields of :func:`run_header`)
MEASURED = "Measured $when on $cpu ($cores cores) with `$command`"


def measured(record: Mapping[str, Any]) -> str:
    """:data:`MEASURED` filled from ``record``: the line every report's prose starts from."""
    return fill(MEASURED, record)


def fill(template: str, fields: Mapping[str, Any]) -> str:
    """A report's prose: ``template`` (``$name`` / ``${name}`` placeholders) filled from ``fields``; a
    placeholder without a field raises, so a page never shows a hole."""
    return Template(template).substitute(fields)


def write_report(out: Path, report: dict[str, Any], markdown: str, *, indent: int = 1) -> None:
    """``<out>.json`` (the record) and ``<out>.md`` (rendered from it), in ``out``'s folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out.with_suffix('')}.json").write_text(json.dumps(report, indent=indent) + "\n")
    Path(f"{out.with_suffix('')}.md").write_text(markdown)
    print(f"wrote {out.with_suffix('')}.json and {out.with_suffix('')}.md")
