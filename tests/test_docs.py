"""The front page and docs/: every relative link names a file that exists, and every #anchor a
heading of the page it points to (GitHub's rules for heading ids)."""

import glob
import os
import re
from typing import Dict, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """The page without fenced code blocks, and code spans without their brackets (brackets in
    code are not links; a code span may be a link's text)."""
    return _CODE_SPAN.sub(lambda m: re.sub(r"[\[\]]", "", m.group(0)), _FENCE.sub("", text))


def _anchors(path: str) -> Set[str]:
    """The ids GitHub gives a page's headings: lower case, punctuation dropped, spaces to
    hyphens, repeats numbered -1, -2, ..."""
    seen: Dict[str, int] = {}
    ids = set()
    with open(path, encoding="utf-8") as f:
        for title in _HEADING.findall(_FENCE.sub("", f.read())):
            slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            ids.add(slug if n == 0 else f"{slug}-{n}")
    return ids


def _links(page: str) -> List[Tuple[str, str]]:
    with open(page, encoding="utf-8") as f:
        targets = _LINK.findall(_prose(f.read()))
    return [(page, t) for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(page):
    broken = []
    for _, target in _links(page):
        file, _, anchor = target.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
        if not os.path.exists(path):
            broken.append(f"{target}: no file {os.path.relpath(path, ROOT)}")
        elif anchor and path.endswith(".md") and anchor not in _anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(path, ROOT)}")
    assert not broken, f"{os.path.relpath(page, ROOT)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_front_page():
    linked = {
        os.path.normpath(os.path.join(ROOT, t.partition("#")[0])) for _, t in _links(PAGES[0])
    }
    unlinked = [os.path.relpath(p, ROOT) for p in PAGES[1:] if p not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"
