"""The documentation holds together: every ``docs/<page>.md#<anchor>`` the code and the docs cite exists (GitHub's
heading slugs), and nothing in the repository cites material outside it."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")
MARKDOWN_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s#]*)(?:#([^)\s]+))?\)")
# Material outside the repository (the project's private reference notes), as a pattern.
OUTSIDE = re.compile(r"\.\./shared|shared/reference|glm130b\.md|anchors\.md|platform-notes\.md|glm-families\.md")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text)
    kept = (c for c in text.lower() if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return "".join(kept).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a markdown page (repeated headings get -1, -2 ... as on GitHub)."""
    seen: dict[str, int] = {}
    found, in_code = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return found


def sources() -> list[Path]:
    code = [*ROOT.joinpath("glm_engine").rglob("*.py"), *ROOT.joinpath("tests").glob("*.py")]
    code += [*ROOT.joinpath("tools").rglob("*.py"), *ROOT.joinpath("benchmarks").glob("*")]
    return [p for p in code if p.is_file() and p.name != "test_docs.py"]


def test_every_docs_citation_in_the_code_resolves():
    broken = []
    for path in sources():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for page, anchor in CITATION.findall(line):
                target = ROOT / "docs" / page
                if not target.is_file() or (anchor and anchor not in anchors(target)):
                    broken.append(f"{path.relative_to(ROOT)}:{number}: docs/{page}#{anchor}")
    assert broken == [], "\n".join(broken)


def test_links_between_the_pages_resolve():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target, anchor in MARKDOWN_LINK.findall(page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            resolved = (page.parent / target).resolve() if target else page
            if not resolved.exists() or (anchor and resolved.suffix == ".md" and anchor not in anchors(resolved)):
                broken.append(f"{page.relative_to(ROOT)}: {target}#{anchor}")
    assert broken == [], "\n".join(broken)


def test_nothing_cites_material_outside_the_repository():
    cited = [
        f"{path.relative_to(ROOT)}: {match}"
        for path in [*sources(), ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
        for match in OUTSIDE.findall(path.read_text(encoding="utf-8"))
    ]
    assert cited == [], "\n".join(cited)


def test_the_slug_follows_github():
    assert slug("The registry and `--backend auto`") == "the-registry-and---backend-auto"
    assert slug("Capabilities: supports(op, dtype, format)") == "capabilities-supportsop-dtype-format"
