"""Every generated page in docs/results/ is what its committed record renders to with today's report code
(no benchmark runs here), and the process layout the scale benchmark starts is compose's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench.harness import RESULTS, percentile
from bench.results import PAGES, render_page

REPO = Path(__file__).resolve().parents[2]
#: results written by hand from dated runs (each states its commands), not rendered from one record
HAND_WRITTEN = {"deployment_ab", "other_benign_xception", "other_benign_candidates", "other_benign_end_to_end"}


@pytest.mark.parametrize("name", sorted(PAGES))
def test_a_committed_page_is_what_its_record_renders_to(name: str) -> None:
    assert render_page(name) == (RESULTS / f"{name}.md").read_text()


def test_every_page_in_results_has_a_renderer_or_is_hand_written() -> None:
    pages = {p.stem for p in RESULTS.glob("*.md")}
    assert pages == set(PAGES) | HAND_WRITTEN


def _row(md: str, start: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(start))


def test_the_key_rows_carry_the_records_numbers() -> None:
    """A few rows per page, read back against the record: the renderers put each number where it belongs."""
    bench = json.loads((RESULTS / "benchmarks.json").read_text())
    m, r = next(iter(bench["models"].items()))
    lv = r["torchserve"]["levels"][0]
    assert _row(render_page("benchmarks"), f"| {m} | {r['batch_size']} | TorchServe | {lv['concurrency']} |") == (
        f"| {m} | {r['batch_size']} | TorchServe | {lv['concurrency']} | {lv['images_per_s']} | {lv['p50']} | "
        f"{lv['p95']} | {lv['p99']} |"
    )
    scale = json.loads((RESULTS / "scale.json").read_text())
    run = scale["runs"][0]
    row = _row(render_page("scale"), f"| {run['label']} | {run['uploads_accepted']}/{run['uploads']} |")
    assert f"| {run['upload_p50_s']} / {run['upload_p95_s']} |" in row
    cells = json.loads((RESULTS / "benchmarks_cells.json").read_text())
    one = cells["results"]["bccd_640x480"]["torchserve"]["1"]
    assert f"| bccd_640x480 | torchserve | 1 | {one['requests']} | {one['p50']} |" in render_page("benchmarks_cells")
    portal = json.loads((RESULTS / "portal_latency.json").read_text())
    name, s = next(iter(portal["scenarios"].items()))
    assert _row(render_page("portal_latency"), f"| {name} | {s['n']} |").startswith(
        f"| {name} | {s['n']} | {s['result_p50_ms']:.0f} |"
    )
    load = json.loads((RESULTS / "reliability.json").read_text())
    first = load["runs"][0]
    assert f"| {first['upload_p50_s']} / {first['upload_p95_s']} |" in render_page("reliability")


def test_one_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([10.0, 20.0], 0.95, 1) == 19.5


def test_the_layout_commands_are_composes() -> None:
    """bench.layout.LAYOUT is the process layout the benchmarks start; its services and commands are
    docker/compose.yaml's."""
    from bench.layout import LAYOUT, PROCESS_TYPES, local_argv

    services = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]
    assert set(LAYOUT) <= set(services)
    for name, service in LAYOUT.items():
        if service.command:
            assert list(service.command) == services[name]["command"], name
    assert PROCESS_TYPES[-1].startswith("load clients") and len(set(PROCESS_TYPES)) == len(PROCESS_TYPES)
    assert Path(local_argv("worker")[1]).is_file()
