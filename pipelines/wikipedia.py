"""Wikipedia ``pages-articles`` XML dumps to clean plain-text documents.

The dump is streamed, so memory stays bounded for a full dump. Pages are parsed one at a
time with ``xml.etree.ElementTree.iterparse`` and dropped from the tree once read, and at
most a fixed number of pages wait for the markup workers. ``.bz2`` (including the
multistream dumps), ``.gz``, ``.xz`` and plain ``.xml`` files are read.

Which pages count as articles: the main namespace (0) only, without redirects, list
pages ("List of ...") or disambiguation pages. Like the data preparation of the
original BERT, the text keeps only prose passages: headings, lists, tables, infoboxes
and other templates, references, image captions and categories are removed. Each
remaining paragraph becomes one line. The markup is parsed by ``mwparserfromhell``.

Run ``python -m pipelines.wikipedia --help`` for the command line, which writes the
documents as plain text (one paragraph per line, a blank line between documents), the
format that ``pipelines.pretraining_data`` reads.
"""

from __future__ import annotations

import argparse
import bz2
import collections
import gzip
import html
import io
import logging
import lzma
import multiprocessing
import os
import re
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mwparserfromhell
from mwparserfromhell import nodes as wiki_nodes

from pipelines.document import Document

logger = logging.getLogger(__name__)

# Namespace prefixes of links that embed media or categorise a page instead of linking text.
_NON_TEXT_LINK_PREFIXES = frozenset({"file", "image", "media", "category", "wikt", "wiktionary"})

# Tags whose content is not prose: citations, tables, formulas, galleries, code.
_DROPPED_TAGS = frozenset(
    {
        "ref", "references", "table", "gallery", "math", "chem", "ce", "timeline", "imagemap",
        "score", "syntaxhighlight", "source", "hiero", "graph", "mapframe", "maplink",
        "templatedata", "noinclude", "includeonly", "categorytree", "inputbox", "charinsert",
        "indicator", "section",
    }
)

# Sections whose content is citations, link lists or navigation rather than article prose.
_DROPPED_SECTIONS = frozenset(
    {
        "references", "external links", "see also", "further reading", "notes", "bibliography",
        "sources", "citations", "footnotes", "notes and references", "works cited", "literature",
        "general references", "related pages",
    }
)

# Templates that render inline words; every other template (infoboxes, citations, hatnotes,
# navigation boxes, pronunciation guides) is dropped. Each maps to the positional argument
# (1-based) holding the displayed text.
_INLINE_TEXT_TEMPLATES = {
    "nowrap": 1, "nobr": 1, "small": 1, "smaller": 1, "big": 1, "em": 1, "strong": 1, "sic": 1,
    "not a typo": 1, "as written": 1, "abbr": 1, "ill": 1, "interlanguage link": 1, "vanchor": 1,
    "mvar": 1, "var": 1, "math": 1, "val": 1, "nihongo": 1, "lang": 2, "transl": 2, "keypress": 1,
    "visible anchor": 1, "linktext": 1, "lang-en": 1, "text": 1, "uss": 1, "hms": 1,
}
_DISAMBIGUATION_TEMPLATES = frozenset(
    {
        "disambiguation", "disambig", "dab", "disamb", "hndis", "geodis", "numberdis",
        "letter-numbercombdisambig", "set index article", "sia", "surname", "given name",
        "species latin name disambiguation", "disambiguation cleanup", "place name disambiguation",
        "school disambiguation", "hospital disambiguation", "mountainindex", "roadindex",
        "shipindex", "call sign disambiguation", "airport disambiguation", "human name disambiguation",
    }
)
_CONVERT_TEMPLATES = frozenset({"convert", "cvt"})
_RANGE_WORDS = frozenset({"-", "–", "to", "and", "or", "x", "×", "by", "+/-", "±"})

_LIST_ITEM_MARK = "\x00"
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_EMPTY_BRACKETS = re.compile(r"\(\s*(?:[,;:]\s*)*\)")
_PUNCTUATION_AFTER_BRACKET = re.compile(r"\(\s*(?:[,;:]\s*)+")
_PUNCTUATION_BEFORE_BRACKET = re.compile(r"(?:\s*[,;:])+\s*\)")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,.;:!?])")
_REPEATED_COMMAS = re.compile(r",(?:\s*,)+")
_MULTIPLE_SPACES = re.compile(r"[ \t\u00a0]{2,}")
_LEFTOVER_QUOTES = re.compile(r"'{2,}")
_TABLE_RESIDUE = re.compile(r"^\s*(?:\{\||\|\}|\|-|\||!)")
_WORD = re.compile(r"\w+")
# Markup that mwparserfromhell left as plain text (it gives up on a construct it cannot
# close, such as a reference after an unbalanced quote) and that is removed by pattern.
_LEFTOVER_REFERENCE = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref\s*>", re.S | re.I)
_LEFTOVER_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_LEFTOVER_LINK = re.compile(r"\[\[([^\[\]|]*)(?:\|([^\[\]]*))?\]\]")
_LEFTOVER_EXTERNAL_LINK = re.compile(r"\[(?:https?:)?//[^\s\]]*\s*([^\]]*)\]")
_LEFTOVER_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")


@dataclass(frozen=True)
class WikiPage:
    """One ``<page>`` element of a dump, before markup removal."""

    title: str
    namespace: int
    page_id: int
    is_redirect: bool
    wikitext: str


@dataclass
class ExtractionCounts:
    """Outcome counts over the pages of a dump; every page lands in exactly one count."""

    articles: int = 0
    redirects: int = 0
    other_namespaces: int = 0
    list_pages: int = 0
    disambiguation_pages: int = 0
    too_short: int = 0
    # Uncompressed bytes of XML read from the dumps, and characters of page wikitext in them.
    dump_bytes: int = 0
    markup_characters: int = 0
    skipped_titles: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))

    @property
    def pages(self) -> int:
        return (
            self.articles + self.redirects + self.other_namespaces + self.list_pages
            + self.disambiguation_pages + self.too_short
        )

    def summary(self) -> str:
        return (
            f"{self.pages} pages: {self.articles} articles kept; skipped {self.redirects} redirects, "
            f"{self.other_namespaces} pages outside the article namespace, {self.list_pages} list pages, "
            f"{self.disambiguation_pages} disambiguation pages, {self.too_short} articles too short "
            "after markup removal"
        )


def open_dump(path: str | os.PathLike) -> io.BufferedIOBase:
    """Open a dump for binary reading, decompressing by file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix in (".xz", ".lzma"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def is_wikipedia_dump(path: str | os.PathLike) -> bool:
    """Tell whether a file is a MediaWiki XML export (possibly compressed)."""
    try:
        with open_dump(path) as stream:
            head = stream.read(4096)
    except (OSError, EOFError, lzma.LZMAError):
        return False
    return b"<mediawiki" in head


class _CountingReader(io.RawIOBase):
    """A read-only stream wrapper that adds the bytes it returns to ``counts.dump_bytes``."""

    def __init__(self, stream: io.BufferedIOBase, counts: ExtractionCounts):
        self._stream = stream
        self._counts = counts

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._counts.dump_bytes += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def iter_pages(path: str | os.PathLike, counts: ExtractionCounts | None = None) -> Iterator[WikiPage]:
    """Stream the pages of a dump in file order, holding one page in memory at a time.

    ``counts.dump_bytes`` (if given) grows with the uncompressed bytes read.
    """
    path = Path(path)
    with open_dump(path) as stream:
        source = _CountingReader(stream, counts) if counts is not None else stream
        parser = ElementTree.iterparse(source, events=("start", "end"))
        root = None
        namespace_prefixes: dict[str, int] = {}
        try:
            for event, element in parser:
                name = _local_name(element.tag)
                if event == "start":
                    if root is None:
                        root = element
                        if name != "mediawiki":
                            raise ValueError(
                                f"{path} is not a MediaWiki XML dump: its root element is <{name}>, "
                                "expected <mediawiki>"
                            )
                    continue
                if name == "namespace":
                    key = element.get("key")
                    if element.text and key is not None:
                        namespace_prefixes[element.text.strip().lower()] = int(key)
                elif name == "page":
                    yield _page_from_element(element, namespace_prefixes)
                    # Drop the finished page from the tree, or a full dump would accumulate in memory.
                    root.clear()
        except ElementTree.ParseError as error:
            raise ValueError(f"{path}: malformed XML dump ({error}); the file may be truncated") from error
        except EOFError as error:
            raise ValueError(f"{path}: the compressed stream ends early ({error}); the file is truncated") from error


def _page_from_element(element: ElementTree.Element, namespace_prefixes: dict[str, int]) -> WikiPage:
    title = ""
    namespace = None
    page_id = -1
    is_redirect = False
    wikitext = ""
    for child in element:
        name = _local_name(child.tag)
        if name == "title":
            title = child.text or ""
        elif name == "ns":
            namespace = int(child.text or 0)
        elif name == "id":
            page_id = int(child.text or -1)
        elif name == "redirect":
            is_redirect = True
        elif name == "revision":
            for part in child:
                if _local_name(part.tag) == "text":
                    wikitext = part.text or ""
    if namespace is None:
        # Exports older than schema 0.5 have no <ns>: take it from the title's prefix.
        prefix = title.split(":", 1)[0].strip().lower() if ":" in title else ""
        namespace = namespace_prefixes.get(prefix, 0) if prefix else 0
    if wikitext[:9].lower() == "#redirect":
        is_redirect = True
    return WikiPage(title, namespace, page_id, is_redirect, wikitext)


def page_skip_reason(page: WikiPage) -> str | None:
    """Return why a page is not an article ("redirect", ...), or None for an article."""
    if page.is_redirect:
        return "redirect"
    if page.namespace != 0:
        return "other_namespace"
    if page.title.startswith(("List of ", "Lists of ")):
        return "list_page"
    if page.title.endswith("(disambiguation)"):
        return "disambiguation"
    return None


def _template_name(template: wiki_nodes.Template) -> str:
    return str(template.name).strip().lower().replace("_", " ")


def _positional(template: wiki_nodes.Template, index: int) -> str | None:
    key = str(index)
    if template.has(key):
        return str(template.get(key).value).strip()
    return None


def _render_template(template: wiki_nodes.Template) -> str:
    name = _template_name(template)
    if name in _CONVERT_TEMPLATES:
        values = [str(param.value).strip() for param in template.params if not param.showkey]
        if not values:
            return ""
        words = [values[0]]
        position = 1
        if len(values) > 2 and values[1] in _RANGE_WORDS:
            words.append("–" if values[1] == "-" else values[1])
            words.append(values[2])
            position = 3
        if position < len(values):
            words.append(values[position])
        return " ".join(words)
    if name.startswith("lang-") and name != "lang-en":
        return _positional(template, 1) or ""
    if name in ("frac", "sfrac"):
        parts = [value for value in (_positional(template, i) for i in (1, 2, 3)) if value]
        if len(parts) == 3:
            return f"{parts[0]} {parts[1]}/{parts[2]}"
        return "/".join(parts)
    index = _INLINE_TEXT_TEMPLATES.get(name)
    if index is not None:
        value = _positional(template, index)
        if value is None and index > 1:
            value = _positional(template, 1)
        if value:
            return _wikicode_to_text(mwparserfromhell.parse(value))
    return ""


def _is_disambiguation(wikicode: mwparserfromhell.wikicode.Wikicode) -> bool:
    for template in wikicode.filter_templates(recursive=False):
        name = _template_name(template)
        if name in _DISAMBIGUATION_TEMPLATES or name.endswith(" disambiguation"):
            return True
    return False


def _render_nodes(nodes: Iterable[wiki_nodes.Node], out: list[str]) -> None:
    skip_section_level: int | None = None
    for node in nodes:
        if isinstance(node, wiki_nodes.Heading):
            title = _wikicode_to_text(node.title).strip().lower()
            if skip_section_level is not None and node.level <= skip_section_level:
                skip_section_level = None
            if skip_section_level is None and title in _DROPPED_SECTIONS:
                skip_section_level = node.level
            # Headings are dropped, but they always end a paragraph.
            out.append("\n")
            continue
        if skip_section_level is not None:
            continue
        if isinstance(node, wiki_nodes.Text):
            out.append(str(node.value))
        elif isinstance(node, wiki_nodes.Wikilink):
            target = str(node.title).strip()
            prefix = target.split(":", 1)[0].strip().lower() if ":" in target and not target.startswith(":") else ""
            if prefix in _NON_TEXT_LINK_PREFIXES or (len(prefix) in (2, 3) and prefix.isalpha()):
                # Media, categories and interlanguage links ("fr:...") display no article text.
                continue
            if node.text is not None:
                _render_nodes(node.text.nodes, out)
            else:
                out.append(target.lstrip(":").split("#", 1)[0] or target.lstrip(":#"))
        elif isinstance(node, wiki_nodes.ExternalLink):
            if node.title is not None:
                _render_nodes(node.title.nodes, out)
        elif isinstance(node, wiki_nodes.Template):
            out.append(_render_template(node))
        elif isinstance(node, wiki_nodes.Tag):
            _render_tag(node, out)
        elif isinstance(node, wiki_nodes.HTMLEntity):
            out.append(node.normalize())
        # Comments, template arguments and anything else carry no article text.


def _render_tag(node: wiki_nodes.Tag, out: list[str]) -> None:
    markup = node.wiki_markup
    if markup is not None and str(markup) in ("*", "#", ":", ";"):
        # List and indentation markers open a list item: the whole line is dropped later.
        out.append(_LIST_ITEM_MARK)
        return
    tag = str(node.tag).strip().lower()
    if tag in _DROPPED_TAGS:
        return
    if tag in ("br", "hr"):
        out.append(" " if tag == "br" else "\n")
        return
    if node.self_closing or node.contents is None:
        return
    if tag in ("li", "dd", "dt"):
        out.append(_LIST_ITEM_MARK)
    _render_nodes(node.contents.nodes, out)


def _wikicode_to_text(wikicode: mwparserfromhell.wikicode.Wikicode) -> str:
    out: list[str] = []
    _render_nodes(wikicode.nodes, out)
    return "".join(out)


def _replace_leftover_link(match: re.Match) -> str:
    target, label = match.group(1), match.group(2)
    prefix = target.split(":", 1)[0].strip().lower() if ":" in target else ""
    if prefix in _NON_TEXT_LINK_PREFIXES:
        return ""
    return label if label is not None else target


def _remove_leftover_markup(text: str) -> str:
    if not any(mark in text for mark in ("<", "{{", "[[", "[http", "[//", "&")):
        return text
    text = _LEFTOVER_REFERENCE.sub("", text)
    # Innermost constructs first, so nested templates and links unwind level by level.
    for pattern, replacement in ((_LEFTOVER_TEMPLATE, ""), (_LEFTOVER_LINK, _replace_leftover_link)):
        for _ in range(10):
            text, changes = pattern.subn(replacement, text)
            if not changes:
                break
    text = _LEFTOVER_EXTERNAL_LINK.sub(r"\1", text)
    text = _LEFTOVER_TAG.sub("", text)
    return html.unescape(text)


def _clean_line(line: str) -> str:
    line = _LEFTOVER_QUOTES.sub("", line)
    line = _EMPTY_BRACKETS.sub("", line)
    line = _PUNCTUATION_AFTER_BRACKET.sub("(", line)
    line = _PUNCTUATION_BEFORE_BRACKET.sub(")", line)
    line = _MULTIPLE_SPACES.sub(" ", line)
    line = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", line)
    line = _REPEATED_COMMAS.sub(",", line)
    return line.strip()


def wikitext_to_paragraphs(wikitext: str | mwparserfromhell.wikicode.Wikicode) -> list[str]:
    """Remove the markup of one article and return its prose paragraphs."""
    if isinstance(wikitext, str):
        wikitext = mwparserfromhell.parse(wikitext)
    text = _remove_leftover_markup(_MAGIC_WORD.sub("", _wikicode_to_text(wikitext)))
    paragraphs = []
    for line in text.split("\n"):
        if line.lstrip(" ").startswith(_LIST_ITEM_MARK) or _TABLE_RESIDUE.match(line):
            continue
        line = _clean_line(line.replace(_LIST_ITEM_MARK, ""))
        if _WORD.search(line):
            paragraphs.append(line)
    return paragraphs


def clean_page(page: WikiPage, min_words: int) -> tuple[str, Document | None]:
    """Turn an article page into a Document; return ("article", doc) or (skip reason, None)."""
    reason = page_skip_reason(page)
    if reason is not None:
        return reason, None
    wikicode = mwparserfromhell.parse(page.wikitext)
    if _is_disambiguation(wikicode):
        return "disambiguation", None
    paragraphs = wikitext_to_paragraphs(wikicode)
    words = sum(len(_WORD.findall(paragraph)) for paragraph in paragraphs)
    if words < min_words:
        return "too_short", None
    return "article", Document(paragraphs, title=page.title, source=f"page {page.page_id}")


def _clean_pages(pages: list[WikiPage], min_words: int) -> list[tuple[str, Document | None]]:
    return [clean_page(page, min_words) for page in pages]


def _count_result(counts: ExtractionCounts, page: WikiPage, reason: str) -> None:
    if reason == "article":
        counts.articles += 1
        return
    attribute = {
        "redirect": "redirects", "other_namespace": "other_namespaces", "list_page": "list_pages",
        "disambiguation": "disambiguation_pages", "too_short": "too_short",
    }[reason]
    setattr(counts, attribute, getattr(counts, attribute) + 1)
    if reason != "redirect":
        titles = counts.skipped_titles[reason]
        if len(titles) < 20:
            titles.append(page.title)


def iter_articles(
    path: str | os.PathLike,
    *,
    workers: int = 1,
    min_words: int = 20,
    counts: ExtractionCounts | None = None,
    pages_per_task: int = 16,
) -> Iterator[Document]:
    """Stream the clean articles of a dump in page order.

    ``workers`` processes remove markup in parallel; at most ``2 * workers`` tasks of
    ``pages_per_task`` pages wait at any time, so memory stays bounded whatever the dump
    size. ``counts`` (if given) is updated with every page's outcome. Articles with fewer
    than ``min_words`` words of prose after markup removal are skipped and counted.
    """
    counts = counts if counts is not None else ExtractionCounts()
    page_stream = iter_pages(path, counts)

    def page_batches() -> Iterator[list[WikiPage]]:
        batch: list[WikiPage] = []
        for page in page_stream:
            counts.markup_characters += len(page.wikitext)
            reason = page_skip_reason(page)
            if reason is not None:
                # Non-articles are counted here so that no worker time is spent on them.
                _count_result(counts, page, reason)
                continue
            batch.append(page)
            if len(batch) == pages_per_task:
                yield batch
                batch = []
        if batch:
            yield batch

    if workers <= 1:
        for batch in page_batches():
            for page, (reason, document) in zip(batch, _clean_pages(batch, min_words)):
                _count_result(counts, page, reason)
                if document is not None:
                    yield document
        return

    context = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    pool = context.Pool(workers)
    try:
        pending: collections.deque = collections.deque()
        batches = page_batches()
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * workers:
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                    break
                pending.append((batch, pool.apply_async(_clean_pages, (batch, min_words))))
            if not pending:
                break
            batch, result = pending.popleft()
            for page, (reason, document) in zip(batch, result.get()):
                _count_result(counts, page, reason)
                if document is not None:
                    yield document
    finally:
        pool.terminate()
        pool.join()


def write_documents(documents: Iterable[Document], output_dir: Path, max_file_bytes: int) -> list[Path]:
    """Write documents as text files of at most ``max_file_bytes`` (one document never splits).

    Format: one paragraph per line, one blank line between documents.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    handle = None
    written = 0
    try:
        for document in documents:
            text = "\n".join(document.paragraphs) + "\n\n"
            size = len(text.encode("utf-8"))
            if handle is None or (written > 0 and written + size > max_file_bytes):
                if handle is not None:
                    handle.close()
                paths.append(output_dir / f"wiki_{len(paths):05d}.txt")
                handle = open(paths[-1], "w", encoding="utf-8")
                written = 0
            handle.write(text)
            written += size
    finally:
        if handle is not None:
            handle.close()
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.wikipedia",
        description=(
            "Extract clean plain-text articles from Wikipedia pages-articles XML dumps "
            "(.xml, .xml.bz2, .xml.gz, .xml.xz). Output: text files with one paragraph per line "
            "and a blank line between articles, readable by `python -m pipelines.pretraining_data`."
        ),
    )
    parser.add_argument("dumps", nargs="+", type=Path, help="pages-articles XML dump files")
    parser.add_argument("--output-dir", type=Path, required=True, help="folder for the wiki_NNNNN.txt files")
    parser.add_argument(
        "--max-file-mb", type=float, default=256.0,
        help="start a new output file after this many megabytes (default: 256)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="processes removing markup in parallel (default: the number of CPU cores)",
    )
    parser.add_argument(
        "--min-words", type=int, default=20,
        help="skip articles with fewer words of prose after markup removal (default: 20)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    for dump in args.dumps:
        if not dump.is_file():
            parser.error(f"dump file not found: {dump}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.max_file_mb <= 0:
        parser.error(f"--max-file-mb must be positive, got {args.max_file_mb}")

    start = time.perf_counter()
    counts = ExtractionCounts()

    def all_articles() -> Iterator[Document]:
        for dump in args.dumps:
            yield from iter_articles(dump, workers=args.workers, min_words=args.min_words, counts=counts)

    paths = write_documents(all_articles(), args.output_dir, int(args.max_file_mb * 1e6))
    elapsed = time.perf_counter() - start
    logger.info("%s", counts.summary())
    logger.info(
        "wrote %d file(s) to %s in %.1f s (%.2f MB of uncompressed dump per second)",
        len(paths), args.output_dir, elapsed, counts.dump_bytes / 1e6 / max(elapsed, 1e-9),
    )
    for reason, titles in counts.skipped_titles.items():
        logger.info("first skipped titles (%s): %s", reason, ", ".join(titles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
