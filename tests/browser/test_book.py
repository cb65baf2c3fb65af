"""The built book, checked in a real browser: every page of the table of contents.

Serves ``_build/html`` on localhost and drives headless Chromium (Debian's ``chromium``;
browser downloads fail on these machines, so Playwright is pointed at that binary).
For each page: no console errors, math typeset by MathJax with no raw ``$$`` left,
every image loaded, every internal link (and its #anchor) resolves, no code block or
display equation scrolls sideways in a 1280-pixel window, and on chapters the Colab
button opens that chapter's notebook in the repository. A full-page
screenshot of each page goes to ``_build/screenshots/`` for people to look at.

Run ``make book`` first (``make test`` does).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

import notebooks  # scripts/notebooks.py: the toc, read in one place

ROOT = notebooks.ROOT
HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))  # to check another build
SHOTS = ROOT / "_build" / "screenshots"
PAGES = notebooks.pages()
CHAPTERS = notebooks.chapters()


def colab_url(chapter: str) -> str:
    repo = notebooks.CONFIG["repository"]
    org_repo = urlparse(repo["url"]).path.strip("/")
    path = "/".join(x for x in (repo.get("path_to_book", "").strip("/"), chapter) if x)
    return f"https://colab.research.google.com/github/{org_repo}/blob/{repo['branch']}/{path}.ipynb"


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail("no built book at _build/html: run `make book` first")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output readable
        pass


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium not found: `make browser` installs Debian's chromium package")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@functools.lru_cache(maxsize=None)
def anchors_of(path: Path) -> frozenset[str]:
    return frozenset(re.findall(r'\bid="([^"]+)"', path.read_text(encoding="utf-8")))


def check_internal_link(base: str, page_url: str, href: str) -> str | None:
    """None if ``href`` resolves to a built file (and its anchor exists), else why not."""
    url, fragment = urldefrag(urljoin(page_url, href))
    rel = url[len(base):] if url.startswith(base) else None
    if rel is None:
        return None  # another site
    target = HTML / (rel or "index.html")
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return f"{href}: no file {target.relative_to(HTML)}"
    if fragment and target.suffix == ".html" and fragment not in anchors_of(target):
        return f"{href}: no anchor #{fragment} in {target.relative_to(HTML)}"
    return None


WAIT_FOR_MATH = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  for (const img of document.images) { img.loading = "eager"; }
  await Promise.all([...document.images].map(img => img.complete ? null :
      new Promise(done => { img.onload = img.onerror = done; })));
}"""


@pytest.mark.parametrize("page", PAGES)
def test_page(page, server, browser):
    errors: list[str] = []
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    url = server + page + ".html"
    response = tab.goto(url, wait_until="load")
    assert response is not None and response.ok, f"{url} answered {response and response.status}"
    tab.evaluate(WAIT_FOR_MATH)

    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SHOTS / f"{page.replace('/', '__')}.png"), full_page=True)

    assert not errors, f"console errors on {page}: {errors}"

    main = tab.locator("main")
    text = main.inner_text()
    assert "$$" not in text, f"raw $$ left in the text of {page}"
    assert tab.locator("mjx-merror").count() == 0, f"MathJax could not typeset something on {page}"
    if page in CHAPTERS or page.endswith("notation"):
        assert tab.locator("main mjx-container").count() > 0, f"no typeset math on {page}"

    broken_images = tab.evaluate(
        "() => [...document.images].filter(i => !(i.naturalWidth > 0)).map(i => i.src)")
    assert not broken_images, f"images that did not load on {page}: {broken_images}"

    hrefs = tab.evaluate("() => [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))")
    broken = [why for href in hrefs if not href.startswith(("mailto:", "javascript:"))
              if (why := check_internal_link(server, url, href))]
    assert not broken, f"internal links that do not resolve on {page}: {broken}"

    if page in CHAPTERS:
        colab = [h for h in hrefs if "colab.research.google.com" in h]
        assert colab == [colab_url(page)], f"Colab button of {page}: {colab}, expected {colab_url(page)}"
    # A code block or display equation wider than its box scrolls sideways: the reader
    # cannot see it at once. (What a cell prints is not code, and is not checked here.)
    too_wide = tab.evaluate("""() => [...document.querySelectorAll(
        'main pre, main mjx-container[display="true"]')]
        .filter(e => !e.closest('.cell_output') && e.scrollWidth > e.clientWidth + 1)
        .map(e => `${e.scrollWidth} > ${e.clientWidth}px: ${e.textContent.slice(0, 60)}`)""")
    tab.close()
    assert not too_wide, f"blocks that scroll sideways on {page}: {too_wide}"
