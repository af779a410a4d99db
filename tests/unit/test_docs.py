"""The repository documents itself: every method citation in the code resolves to a section of
docs/method.md, and the links between the README and docs/ pages point at anchors that exist."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
METHOD = REPO / "docs" / "method.md"
#: ``method §A.3``, also ``method §E, C.1.2`` and ``method §C and §G`` (each ID is cited).
CITATION = re.compile(r"method §([A-H](?:\.\d+)*(?:(?:, | and §)[A-H](?:\.\d+)*)*)")
SECTION = re.compile(r"[A-H](?:\.\d+)*")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    explicit = set(re.findall(r'<a id="([^"]+)"></a>', text))
    # GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens.
    headings = {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", text, re.M)
    }
    return explicit | headings


def _code_files() -> list[Path]:
    roots = ["src", "scripts", "rules", "config", "tests", "benchmarks", "report"]
    return [
        p
        for root in roots
        for p in (REPO / root).rglob("*")
        if p.suffix in (".py", ".smk", ".yaml", ".rst") and "egg-info" not in str(p)
    ]


def test_every_method_citation_resolves_to_a_section_of_method_md():
    anchors = _anchors(METHOD)
    cited, missing = 0, []
    for path in _code_files():
        for match in CITATION.finditer(path.read_text(encoding="utf-8")):
            for section in SECTION.findall(match.group(1)):
                cited += 1
                if section not in anchors:
                    missing.append(f"{path.relative_to(REPO)}: §{section}")
    assert cited > 100 and missing == []


def test_the_code_cites_the_method_page_not_the_external_specification():
    stale = [
        str(p.relative_to(REPO))
        for p in _code_files()
        if "lib_spec" in p.read_text() and p != Path(__file__).resolve()
    ]
    assert stale == []


def test_links_between_the_readme_and_docs_resolve():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # an external address
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.name}: {target}")
    assert broken == []
