"""Wikipedia markup → plain text, on top of gensim's ``filter_wiki``.

gensim removes templates, references, tables, links and file/image embeds; what it
leaves is bold/italic quotes, ``== headings ==``, list markers, magic words, the rows of
tables it only half removes, and the reference sections at the end. This module strips
those so that the text reads like prose.
"""

from __future__ import annotations

import html
import re

from gensim.corpora.wikicorpus import filter_wiki

# Sections made of citations and links rather than prose.
_DROP_SECTIONS = {
    "references", "notes", "footnotes", "citations", "sources", "bibliography",
    "further reading", "external links", "see also", "notes and references",
}  # fmt: skip
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")
_QUOTES = re.compile(r"'{2,}")  # '' italic, ''' bold, ''''' both
_MAGIC = re.compile(r"__[A-Z]+__")  # __TOC__, __NOTOC__
_LIST = re.compile(r"^[*#:;]+\s*")
_LEFTOVER = re.compile(r"\{\{[^{}]*\}\}|\[\[|\]\]|<[^<>]*>")  # templates, link brackets, tags
_SPACES = re.compile(r"[ \t\u00a0]+")
_SPACE_PUNCT = re.compile(r"\s+([,.;:)])")
_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")
_LETTER = re.compile(r"[^\W\d_]")
# Gallery lines and image captions that filter_wiki leaves: "File:X.jpg|caption", "...|alt=...".
_MEDIA = re.compile(
    r"^(File|Image):|\.(jpe?g|png|svg|gif|tiff?)\s*\||\|\s*(alt=|thumb|upright|\d+(x\d+)?px)",
    re.IGNORECASE,
)


def is_redirect(markup: str) -> bool:
    """True for a redirect page (``#REDIRECT [[Target]]``)."""
    return markup.lstrip()[:9].lower() == "#redirect"


def clean_wiki(markup: str) -> str:
    """Plain text of one article: headings on their own lines, one blank line between paragraphs."""
    text = html.unescape(filter_wiki(markup))
    text = _LEFTOVER.sub("", _MAGIC.sub("", _QUOTES.sub("", text)))
    lines: list[str] = []
    dropping = False
    for raw in text.splitlines():
        line = _SPACES.sub(" ", raw).strip()
        heading = _HEADING.match(line)
        if heading:
            title = heading.group(2).strip()
            dropping = title.lower() in _DROP_SECTIONS
            if not dropping and title:
                lines += ["", title]
            continue
        line = _LIST.sub("", line)
        line = _EMPTY_PARENS.sub("", _SPACE_PUNCT.sub(r"\1", line)).strip()
        # Lines with no letter are table cells or empty bullets; "= ..." is a formula's remnant.
        if dropping or _MEDIA.search(line) or not _LETTER.search(line) or line[0] == "=":
            if lines and lines[-1]:
                lines.append("")  # keep the paragraph break
            continue
        lines.append(line)
    # Collapse runs of blank lines to one; the heading lines sit in their own paragraphs.
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
