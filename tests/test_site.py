"""The course website (``scripts/build_site.py``), built from the committed notebooks and opened
page by page in headless Chromium: every page renders, shows its figures, loads nothing that
fails and logs no console error, and every relative link (``#anchor`` included) resolves.

Chromium is Debian's ``/usr/bin/chromium`` driven by pip's ``playwright`` (``playwright install``
needs the internet); without it the browser tests skip and say how to install it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse
from urllib.request import url2pathname

import nbformat
import pytest
from playwright.sync_api import Browser, sync_playwright

from course_utils import config

REPO = config.repo_root()
sys.path.insert(0, str(REPO / "scripts"))
from build_site import build, rewrite_href  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PAGES = ["index.html"] + [f"{path.stem}.html" for path in NOTEBOOKS]
PAGE_FACTS = """() => ({
  heading: document.querySelector("h1")?.innerText ?? "",
  images: Array.from(document.images, i => ({src: i.src.slice(0, 60), loaded: i.naturalWidth > 0})),
  figures: document.querySelectorAll(".jp-OutputArea-output img").length,
  links: Array.from(document.querySelectorAll("a[href]"), a => a.href),
  ids: Array.from(document.querySelectorAll("[id]"), e => e.id),
})"""


@dataclass
class Page:
    """What the browser saw on one page."""

    title: str = ""
    heading: str = ""
    images: list[dict] = field(default_factory=list)
    figures: int = 0
    links: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # console errors, failed requests


def visit(browser: Browser, path: Path) -> Page:
    """Open ``path`` in a fresh tab (any http(s) request is refused and counts as an error)."""
    tab = browser.new_page()
    errors: list[str] = []
    tab.route(re.compile(r"^https?://"), lambda route: route.abort())
    tab.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text}"))
    tab.on("pageerror", lambda error: errors.append(f"script: {error}"))
    tab.on("requestfailed", lambda r: errors.append(f"request failed: {r.url[:100]}"))
    tab.goto(path.as_uri(), wait_until="load")
    page = Page(title=tab.title(), errors=errors, **tab.evaluate(PAGE_FACTS))
    tab.close()
    return page


def broken_links(pages: dict[Path, Page]) -> list[str]:
    """Each relative link of ``pages`` to a missing file, or to a ``#anchor`` with no such id."""
    problems = []
    for source, page in pages.items():
        for link in page.links:
            url, fragment = urldefrag(link)
            if urlparse(url).scheme != "file":
                continue
            target = Path(url2pathname(urlparse(url).path))
            if not target.is_file():
                problems.append(f"{source.name}: {link} -> no such file")
            elif fragment and target in pages:
                if not {fragment, unquote(fragment)} & set(pages[target].ids):
                    problems.append(f"{source.name}: {link} -> no id {unquote(fragment)!r}")
            elif fragment:
                problems.append(f"{source.name}: {link} -> outside the site")
    return problems


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: install Debian's chromium: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Page]:
    """The site built from the committed notebooks, every page visited."""
    return {path: visit(browser, path) for path in build(tmp_path_factory.mktemp("site"))}


def by_name(site: dict[Path, Page], name: str) -> Page:
    """The page of the site called ``name``."""
    return next(page for path, page in site.items() if path.name == name)


def test_rewrite_href() -> None:
    assert rewrite_href("03_architecture_comparison.ipynb") == "03_architecture_comparison.html"
    assert rewrite_href("./08_faq.ipynb#Is-it-better?") == "08_faq.html#Is-it-better?"
    for kept in ("https://colab.research.google.com/x/03_a.ipynb", "../no-such-file.md", "#top"):
        assert rewrite_href(kept) == kept
    repository = "https://github.com/resnet-course/resnet50-vs-resnet101"
    assert rewrite_href("../README.md#Set-up") == f"{repository}/blob/main/README.md#Set-up"
    assert rewrite_href("solutions/README.md", ".") == f"{repository}/blob/main/solutions/README.md"
    assert rewrite_href("../course_utils/") == f"{repository}/tree/main/course_utils"


def test_broken_links_reports_a_missing_anchor_and_file(tmp_path: Path) -> None:
    home, target = tmp_path / "index.html", tmp_path / "01_a.html"
    home.touch()
    target.touch()
    pages = {
        home: Page(links=[f"{target.as_uri()}#Here", f"{target.as_uri()}#Gone", "https://x.org/"]),
        target: Page(links=[f"{home.as_uri()}#", (tmp_path / "02_b.html").as_uri()], ids=["Here"]),
    }
    assert broken_links(pages) == [
        f"index.html: {target.as_uri()}#Gone -> no id 'Gone'",
        f"01_a.html: {(tmp_path / '02_b.html').as_uri()} -> no such file",
    ]


def test_the_browser_checks_catch_defects(browser: Browser, tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text(
        '<title>t</title><h1 id="h">h</h1><img src="missing.png"><a href="#h">ok</a>'
        '<script src="https://cdn.example.org/x.js"></script><script>console.error("x")</script>'
    )
    seen = visit(browser, page)
    assert seen.heading == "h" and seen.ids == ["h"] and seen.links == [f"{page.as_uri()}#h"]
    assert [image["loaded"] for image in seen.images] == [False]
    for defect in ("missing.png", "request failed: https://cdn.example.org/x.js", "console: x"):
        assert any(defect in error for error in seen.errors), (defect, seen.errors)


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_offline_without_errors(site: dict[Path, Page], name: str) -> None:
    page = by_name(site, name)
    assert page.title.strip() and page.heading.strip(), f"{name}: no title or no <h1>"
    assert page.errors == [], f"{name}: {page.errors}"
    assert len(page.links) >= 2, f"{name}: no navigation links"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_notebook_page_shows_its_figures(site: dict[Path, Page], path: Path) -> None:
    page = by_name(site, f"{path.stem}.html")
    assert [image["src"] for image in page.images if not image["loaded"]] == []
    outputs = nbformat.read(path, as_version=4).cells
    images = sum(
        any(kind in output.get("data", {}) for kind in ("image/png", "image/jpeg"))
        for cell in outputs
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert page.figures >= images, f"{path.name}: {images} image outputs, {page.figures} shown"


def test_no_broken_internal_link(site: dict[Path, Page]) -> None:
    assert broken_links(site) == []
