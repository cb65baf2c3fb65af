"""fm_helpers.results: the published benchmark results, from the checkout or a URL."""

import json
import socket
from pathlib import Path

import pytest

from conftest import free_port  # nothing listens there
from fm_helpers.results import RESULTS_FILE, BenchmarkResultsError, benchmark_results

ROOT = Path(__file__).resolve().parents[1]


def test_found_from_a_chapter_folder():
    """A notebook runs in chapters/: the file is found in the folder above."""
    assert benchmark_results(ROOT / "chapters") == json.loads((ROOT / RESULTS_FILE).read_text())


def test_the_nearest_copy_wins(tmp_path):
    for folder, date in [(tmp_path, "outer"), (tmp_path / "a", "inner")]:
        (folder / RESULTS_FILE).parent.mkdir(parents=True)
        (folder / RESULTS_FILE).write_text(json.dumps({"meta": {"date": date}}))
    (tmp_path / "a" / "b").mkdir()
    assert benchmark_results(tmp_path / "a" / "b")["meta"]["date"] == "inner"


def test_downloaded_when_there_is_no_checkout(tmp_path, served):
    root, base = served
    (root / "latest.json").write_text(json.dumps({"meta": {"date": "served"}}))
    got = benchmark_results(tmp_path, url=f"{base}/latest.json", timeout=5.0)
    assert got == {"meta": {"date": "served"}}


@pytest.mark.parametrize("what", ["closed port", "missing file", "not JSON", "silent"])
def test_a_clear_error_when_neither_works(tmp_path, served, what):
    root, base = served
    (root / "page.html").write_text("<html>not json</html>")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts the connection and never answers
        url = {"closed port": f"http://127.0.0.1:{free_port()}/latest.json",
               "missing file": f"{base}/latest.json",
               "not JSON": f"{base}/page.html",
               "silent": f"http://127.0.0.1:{silent.getsockname()[1]}/latest.json"}[what]
        with pytest.raises(BenchmarkResultsError, match="within 0.5 s.*make bench"):
            benchmark_results(tmp_path, url=url, timeout=0.5)
