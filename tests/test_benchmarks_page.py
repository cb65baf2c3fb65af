"""The book's benchmark page shows what benchmarks/results/latest.json holds.

A consistency check, not a timing threshold: the tables that book/benchmarks.md includes
must be exactly what benchmarks/report.py renders from the committed JSON, the goal
verdicts must follow from the JSON's numbers, and every figure the page shows must exist.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "book" / "benchmarks.md"

sys.path.insert(0, str(ROOT / "benchmarks"))
import report  # noqa: E402  (renders without PyTorch, and runs nothing)


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads((RESULTS / "latest.json").read_text())


@pytest.fixture(scope="module")
def tables() -> str:
    return (RESULTS / "latest.md").read_text()


def test_page_includes_the_generated_tables():
    page = PAGE.read_text()
    include = re.search(r"```\{include\}\s+(\S+)\s*\n((?::[\w-]+:.*\n)*)```", page)
    assert include, "book/benchmarks.md has an {include} directive"
    assert (PAGE.parent / include.group(1)).resolve() == (RESULTS / "latest.md").resolve()
    assert ":relative-images:" in include.group(2), "figure paths are relative to latest.md"


def test_tables_are_rendered_from_the_json(results, tables):
    assert tables == report.render(results, report.PAGE_IMAGE_DIR), (
        "benchmarks/results/latest.md differs from what latest.json renders to; "
        "run `python benchmarks/run.py --render benchmarks/results/latest.json`"
    )


def test_goal_verdicts_follow_from_the_numbers(results):
    assert results["goals"] == report.goals(results)


def test_published_run_is_a_full_run(results):
    meta = results["meta"]
    assert meta["quick"] is False, "the published results come from a full run, not --quick"
    names = [s.NAME for s in report.SECTIONS]
    required = {s.NAME for s in report.SECTIONS if not s.OPT_IN}
    added = list(meta.get("added", {}))  # sections measured later with run.py --add
    assert required <= set(meta["only"]) | set(added), \
        "every section that is not opt-in ran, in the run or added to it"
    assert all(name in results for name in added)
    assert meta["only"] == [n for n in names if n in meta["only"]], "sections in page order"
    assert all(name in results for name in meta["only"])
    for key in ("date", "cpu_model", "cores", "packages"):
        assert meta[key], f"results are stamped with {key}"
    assert {"jax", "jaxlib", "flax", "optax", "diffrax", "torch"} <= set(meta["packages"])


def _row(tables: str, section: str, first_cell: str) -> str:
    """The table row that starts with ``first_cell`` in the section whose heading names ``section``."""
    part = re.split(r"\n## ", tables)
    text = next(p for p in part if p.split("\n", 1)[0].endswith(section))
    return next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))


def test_key_numbers_appear_in_the_tables(results, tables):
    """A check that does not go through report.render: some figures, formatted independently."""
    for run in results["budget"]["runs"]:
        row = _row(tables, "Quality against training budget", f"{run['steps']:,}")
        assert f"{run['kl_gap']:.3f} ± {run['nll_stderr']:.3f}" in row
    for batch, rec in results["training"]["batches"].items():
        row = _row(tables, "Training throughput", batch)
        assert f"| {rec['ratios']['fused / best torch']:.2f} |" in row
    for rec in results["density"]["scaling"]["rows"]:
        row = _row(tables, "exact against Hutchinson", str(rec["d"]))
        assert f"| {rec['exact_seconds']:.3f} | {rec['hutchinson_seconds']:.3f} |" in row
    for run in results["straight"]["runs"]:
        for name, rec in run["models"].items():
            assert f"| {name} |" in tables
    for rec in results["straight"]["batch_sweep"]:
        row = _row(tables, "Straighter paths", str(rec["batch_size"]))
        assert f"| {rec['ms_per_step']:.2f} |" in row
    for goal in results["goals"]:
        assert f"| {goal['goal']} | {goal['measured']} |" in tables


def test_every_figure_exists(tables):
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", tables)
    assert images, "the generated tables show figures"
    for image in images:
        assert (RESULTS / image).is_file(), f"missing figure {image}"
