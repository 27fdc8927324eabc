"""Build the course website from the committed, executed notebooks: static HTML, no network.

    python scripts/build_site.py                 write artifacts/site/ (COURSE_ARTIFACTS_DIR/site)
    python scripts/build_site.py --output DIR    write DIR instead
    python scripts/build_site.py --executed DIR  show the executed copies in DIR where they exist
                                                 (run_course.sh: this run's <artifacts>/notebooks)

Pages: ``index.html`` (the README's syllabus table and the verdict table that
``scripts/show_results.py`` renders from ``results/verdict.json``) and one ``NN_name.html`` per
``notebooks/NN_*.ipynb``, each with home / previous / next links at the top and bottom. The
pages load nothing from outside: nbconvert's lab template without its require.js, MathJax,
Mermaid and widget scripts; figures are embedded; math is converted to MathML at build time
(latex2mathml), which the browser renders itself; external images (the Colab badge) become their
alt text, still linked; widget outputs (progress bars) are left out.

Links: a markdown link to ``NN_name.ipynb`` or ``NN_name.ipynb#anchor`` becomes ``NN_name.html``
or ``NN_name.html#anchor``; a relative link to another file or folder of the repository (the
README's ``solutions/README.md``) becomes a link to it in the repository (``repository-code`` of
``CITATION.cff``), since the site holds only the pages; other links are kept as written
(``tests/test_site.py`` fails on a relative link to a missing file or on a ``#anchor`` that no
element of the target page has).

Heading anchors are nbconvert's own (``nbconvert.filters.strings.add_anchor``): the id of a
markdown heading is its rendered text (bold, italics, code and links keep only their text,
``&amp;`` is ``&``, math stays TeX such as ``$x_1$``), each space (not tab) replaced by ``-``,
then percent-encoded as UTF-8 except ASCII letters, digits and ``_.-~?/:@!$&'()*+,;=`` (so ``#``
is ``%23``, ``%`` is ``%25``, ``"`` is ``%22``, ``·`` is ``%C2%B7``). Case and punctuation are
kept, nothing is shortened, two equal headings get the same id (a browser jumps to the first),
and a heading whose HTML is not well-formed XML (a bare ``<br>``) gets no id. Examples:
``## What am I running on?`` -> ``What-am-I-running-on?``; ``# 03 · Architecture comparison:
what really differs?`` -> ``03-%C2%B7-Architecture-comparison:-what-really-differs?``. A link
may write ``·`` as it is: nbconvert encodes it in the href the same way.
"""

from __future__ import annotations

import argparse
import copy
import html
import posixpath
import re
import sys
from pathlib import Path

import nbformat
from bs4 import BeautifulSoup, NavigableString
from jinja2 import DictLoader
from latex2mathml.converter import convert as latex_to_mathml
from nbconvert import HTMLExporter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import show_results  # noqa: E402  (the verdict table; puts the repo on sys.path)
from run_notebooks import title  # noqa: E402

from course_utils import config  # noqa: E402

NOTEBOOK_LINK = re.compile(r"^(?:\./)?(\d\d_[\w-]+)\.ipynb(#.*)?$")
SYLLABUS_ROW = re.compile(
    r"^\|\s*\d\d\s*\|\s*\[[^\]]+\]\(notebooks/(?P<stem>\d\d_[\w-]+)\.ipynb\)\s*\|"
    r"\s*(?P<question>.*?)\s*\|\s*$"
)
REPOSITORY = re.search(
    r'^repository-code:\s*"?([^"\s]+)"?', (REPO / "CITATION.cff").read_text(), re.MULTILINE
)[1]
MATH = re.compile(r"\$\$(?P<display>.+?)\$\$|\$(?P<inline>[^$\n]+?)\$", re.DOTALL)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

# nbconvert's lab template, minus every script it would fetch from a CDN, plus the navigation.
TEMPLATE = """{%- extends 'index.html.j2' -%}
{% block html_head_js %}{% endblock html_head_js %}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block html_head_js_mathjax %}{% endblock html_head_js_mathjax %}
{% block html_head_js_mermaidjs %}{% endblock html_head_js_mermaidjs %}
{% block extra_css %}<style>
nav.site-nav { display: flex; gap: 2em; padding: 0.6em 1em; font-family: sans-serif; }
nav.site-nav a { text-decoration: none; }
</style>{% endblock extra_css %}
{% block body_header %}{{ super() }}{{ resources.site_nav }}{% endblock body_header %}
{% block body_footer %}{{ resources.site_nav }}{{ super() }}{% endblock body_footer %}
"""


def rewrite_href(href: str, folder: str = "notebooks") -> str:
    """``NN_name.ipynb[#anchor]`` -> ``NN_name.html[#anchor]``; a relative link, from a page
    whose source is in the repository's ``folder``, to another repository file -> that file in
    the repository; any other link unchanged."""
    match = NOTEBOOK_LINK.match(href)
    if match:
        return f"{match[1]}.html{match[2] or ''}"
    target, _, anchor = href.partition("#")
    if not target or re.match(r"^[a-z][a-z0-9+.-]*:|^/", target):
        return href
    path = posixpath.normpath(posixpath.join(folder, target))
    if path.startswith("..") or not (REPO / path).exists():
        return href
    kind = "tree" if (REPO / path).is_dir() else "blob"
    return f"{REPOSITORY}/{kind}/main/{path}" + (f"#{anchor}" if anchor else "")


def questions(readme: str) -> dict[str, str]:
    """``{notebook stem: the question it answers}`` from the README's syllabus table."""
    rows = (SYLLABUS_ROW.match(line) for line in readme.splitlines())
    return {row["stem"]: row["question"] for row in rows if row}


def without_widgets(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` without widget outputs and state (they need a CDN's manager)."""
    notebook = copy.deepcopy(notebook)
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [out for out in cell.outputs if WIDGET_VIEW not in out.get("data", {})]
    return notebook


def math_nodes(text: str) -> list:
    """``text`` split into text and MathML nodes, one per ``$...$`` or ``$$...$$``."""
    nodes, end = [], 0
    for match in MATH.finditer(text):
        display = "block" if match["display"] is not None else "inline"
        mathml = latex_to_mathml(match["display"] or match["inline"], display=display)
        nodes += [NavigableString(text[end : match.start()])]
        nodes += list(BeautifulSoup(mathml, "html.parser").contents)
        end = match.end()
    return [*nodes, NavigableString(text[end:])]


def post_process(page: str, folder: str) -> str:
    """Rewrite the links of a page whose source is in ``folder``, render math, and turn external
    images into their alt text."""
    soup = BeautifulSoup(page, "html.parser")
    for link in soup.find_all("a", href=True):
        link["href"] = rewrite_href(link["href"], folder)
    for image in soup.find_all("img", src=re.compile(r"^(https?:)?//")):
        image.replace_with(image.get("alt") or image["src"])
    for markdown in soup.select(".jp-RenderedMarkdown"):
        for text in markdown.find_all(string=MATH):
            if not text.find_parent(["code", "pre", "script", "style"]):
                text.replace_with(*math_nodes(str(text)))
    return str(soup)


def navigation(pages: list[tuple[str, str]], index: int) -> str:
    """Home / previous / next links for ``pages[index]`` (``pages``: (file, title) in order)."""
    links = ['<a href="index.html">home</a>']
    if index > 0:
        links.append(
            f'<a href="{pages[index - 1][0]}">&larr; {html.escape(pages[index - 1][1])}</a>'
        )
    if index + 1 < len(pages):
        links.append(
            f'<a href="{pages[index + 1][0]}">{html.escape(pages[index + 1][1])} &rarr;</a>'
        )
    return f'<nav class="site-nav">{"".join(links)}</nav>'


def home_markdown(readme: str, notebooks: dict[str, nbformat.NotebookNode]) -> str:
    """The home page: the README's title and first paragraph, the syllabus (each notebook's
    title, and its question from the README's table), the verdict."""
    heading, intro = readme.split("\n\n")[:2]
    asked = questions(readme)
    lines = ["| # | notebook | the question it answers |", "|---|---|---|"]
    for stem, notebook in notebooks.items():
        if stem not in asked:
            print(f"warning: README.md's syllabus table has no row for {stem}", file=sys.stderr)
        lines.append(f"| {stem[:2]} | [{title(notebook)}]({stem}.ipynb) | {asked.get(stem, '')} |")
    verdict = show_results.results.read(show_results.VERDICT).get(show_results.PROFILE, {})
    return "\n\n".join(
        [
            heading,
            intro,
            "## Syllabus",
            "\n".join(lines),
            "## The verdict, as measured",
            f"Measured in the `{show_results.PROFILE}` profile; each row names its notebook.",
            show_results.render_verdict(verdict),
        ]
    )


def build(output: Path, executed: Path | None = None) -> list[Path]:
    """Write the site into ``output``; return the pages written, home page first.

    Every notebook of ``notebooks/`` gets a page; where ``executed`` holds a copy of the same
    name (a learner's own run, e.g. ``<artifacts>/notebooks``), that copy is shown instead.
    """
    notebooks = {
        path.stem: nbformat.read(
            executed / path.name if executed and (executed / path.name).is_file() else path,
            as_version=4,
        )
        for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    }
    readme = (REPO / "README.md").read_text()
    home = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell(home_markdown(readme, notebooks))]
    )
    pages = [("index.html", "home", home)] + [
        (f"{stem}.html", title(notebook), without_widgets(notebook))
        for stem, notebook in notebooks.items()
    ]
    exporter = HTMLExporter(
        template_name="lab",
        template_file="site.html.j2",
        extra_loaders=[DictLoader({"site.html.j2": TEMPLATE})],
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    titles = [(name, page_title) for name, page_title, _ in pages]
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (name, page_title, notebook) in enumerate(pages):
        resources = {
            "metadata": {"name": readme.splitlines()[0][2:] if index == 0 else page_title},
            "site_nav": navigation(titles, index),
        }
        body, _ = exporter.from_notebook_node(notebook, resources=resources)
        folder = "." if index == 0 else "notebooks"
        (output / name).write_text(post_process(body, folder), encoding="utf-8")
        written.append(output / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="the site's folder (default <artifacts>/site)")
    parser.add_argument(
        "--executed",
        type=Path,
        metavar="DIR",
        help="show the executed copies in DIR where they exist (default: notebooks/ only)",
    )
    args = parser.parse_args(argv)
    pages = build((args.output or config.artifacts_dir() / "site").resolve(), args.executed)
    source = "notebooks/" + (
        f", your run in {config.display_path(args.executed)}" if args.executed else ""
    )
    print(f"Website ({len(pages)} pages, from {source}): {config.display_path(pages[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
