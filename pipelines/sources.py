"""Pre-training inputs: what each input is, and its documents.

An input is one of:

- a Wikipedia ``pages-articles`` XML dump (plain or compressed), recognised by its
  ``<mediawiki`` root element whatever the file name;
- a plain text file (``.bz2``, ``.gz`` and ``.xz`` are decompressed): one sentence or
  paragraph per line, a blank line between documents. A file whose lines include
  WikiText headings (`` = Title = ``) is read as WikiText: each top-level heading starts a
  new document, section headings (`` = = Section = = ``) are dropped, the release's
  tokenisation marks (`` @-@ ``, `` @,@ ``, `` @.@ ``) are undone and ``<unk>`` becomes
  the tokenizer's ``[UNK]``;
- a folder: every non-hidden file below it, in sorted path order, each read as above.
  A folder written by ``datasets.Dataset.save_to_disk`` is read as that dataset;
- any other string: a Hugging Face dataset name, ``NAME`` or ``NAME:CONFIG``, loaded
  with ``datasets.load_dataset`` (from the local cache when offline).

No input means the built-in sample: the English Wikipedia dump excerpt (206 pages)
that ships inside gensim's wheel, so a machine without network access can still build
real pre-training data.

A document never spans two inputs or two files. Inputs are read as streams, so only one
document at a time is in memory here. NOTE: a text file without blank lines is one
document and is held in memory whole.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.document import Document
from pipelines.wikipedia import ExtractionCounts, is_wikipedia_dump, iter_articles, open_dump

logger = logging.getLogger(__name__)

GENSIM_SAMPLE_NAME = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
METADATA_FILE_NAME = "metadata.json"

_WIKITEXT_TITLE = re.compile(r"^ ?= [^=].* = ?$")
_WIKITEXT_SECTION = re.compile(r"^ ?(?:= ){2,}.*(?: =){2,} ?$")
_WIKITEXT_MARKS = (("@-@", "-"), ("@,@", ","), ("@.@", "."))
_WIKITEXT_UNK = re.compile(r"<unk>")
# Lines read before deciding whether a text source is WikiText.
_FORMAT_PROBE_LINES = 200
_HF_SAVED_MARKERS = ("state.json", "dataset_dict.json")


@dataclass(frozen=True)
class InputSource:
    """One resolved input: ``kind`` is "wikipedia", "text", "hf_disk" or "hf_hub"."""

    kind: str
    location: str
    description: str

    def fingerprint(self) -> dict:
        """Identity of the input for deciding whether prepared data is current.

        Files are identified by path, size and modification time, because hashing a full
        dump on every start would be slow. Hub datasets are identified by name and config
        (the split and text column are build settings of their own).
        """
        if self.kind in ("wikipedia", "text"):
            stat = os.stat(self.location)
            return {"kind": self.kind, "path": self.location, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if self.kind == "hf_disk":
            states = sorted(Path(self.location).rglob("state.json"))
            digest = hashlib.sha256(b"".join(state.read_bytes() for state in states)).hexdigest()
            return {"kind": self.kind, "path": self.location, "state_sha256": digest}
        return {"kind": self.kind, "name": self.location}


@dataclass
class InputCounts:
    """Documents produced and skipped while reading inputs, and raw bytes read."""

    documents: int = 0
    empty_documents: int = 0
    raw_bytes: int = 0
    wikipedia: ExtractionCounts = field(default_factory=ExtractionCounts)

    def summary(self) -> str:
        parts = [f"{self.documents} documents read from {self.raw_bytes / 1e6:.1f} MB of input"]
        if self.empty_documents:
            parts.append(f"{self.empty_documents} documents without text skipped")
        if self.wikipedia.pages:
            parts.append(f"Wikipedia: {self.wikipedia.summary()}")
        return "; ".join(parts)


def gensim_sample_path() -> Path:
    """Path of the English Wikipedia dump excerpt inside the installed gensim package."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "no input was given and the built-in sample needs gensim: install it "
            "(`pip install -r requirements.txt`) or pass input files"
        )
    path = Path(spec.origin).parent / "test" / "test_data" / GENSIM_SAMPLE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"the built-in Wikipedia sample {path} is missing from the gensim installation; "
            "reinstall gensim from its wheel or pass input files"
        )
    return path


def _is_hf_saved_dataset(path: Path) -> bool:
    return any((path / marker).is_file() for marker in _HF_SAVED_MARKERS)


def _looks_like_dataset_name(name: str) -> bool:
    base = name.split(":", 1)[0]
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", base)) and not base.endswith((".txt", ".xml", ".bz2"))


def _file_source(path: Path) -> InputSource:
    if is_wikipedia_dump(path):
        return InputSource("wikipedia", str(path), f"Wikipedia dump {path}")
    return InputSource("text", str(path), f"text file {path}")


def resolve_inputs(input_files: Iterable[str | os.PathLike]) -> list[InputSource]:
    """Classify inputs; an empty list gives the built-in Wikipedia sample."""
    inputs = [str(item) for item in input_files]
    if not inputs:
        sample = gensim_sample_path()
        return [InputSource("wikipedia", str(sample), f"built-in Wikipedia sample {sample.name}")]
    sources: list[InputSource] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file():
            sources.append(_file_source(path.resolve()))
        elif path.is_dir():
            path = path.resolve()
            if (path / METADATA_FILE_NAME).is_file():
                raise ValueError(
                    f"input {path} is already prepared pre-training data; give it to the data loader "
                    "directly instead of preparing it again"
                )
            if _is_hf_saved_dataset(path):
                sources.append(InputSource("hf_disk", str(path), f"saved Hugging Face dataset {path}"))
                continue
            files = sorted(
                child for child in path.rglob("*")
                if child.is_file() and not any(part.startswith(".") for part in child.relative_to(path).parts)
            )
            if not files:
                raise ValueError(f"input folder {path} contains no files")
            sources.extend(_file_source(child) for child in files)
        elif _looks_like_dataset_name(item):
            sources.append(InputSource("hf_hub", item, f"Hugging Face dataset {item}"))
        else:
            raise FileNotFoundError(f"input not found: {item} is not a file, a folder or a Hugging Face dataset name")
    return sources


def _undo_wikitext_marks(line: str) -> str:
    for mark, character in _WIKITEXT_MARKS:
        line = line.replace(f" {mark} ", character)
    return _WIKITEXT_UNK.sub("[UNK]", line)


def documents_from_lines(
    lines: Iterable[str], *, wikitext: bool, source: str, counts: InputCounts
) -> Iterator[Document]:
    """Group lines into documents: blank lines separate documents, or WikiText titles do."""
    paragraphs: list[str] = []
    title: str | None = None
    start_line = 1

    def finish() -> Iterator[Document]:
        if paragraphs:
            counts.documents += 1
            yield Document(list(paragraphs), title=title, source=f"{source}, line {start_line}")
        elif title is not None:
            counts.empty_documents += 1

    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if wikitext:
            if _WIKITEXT_TITLE.match(line):
                yield from finish()
                paragraphs, title, start_line = [], _undo_wikitext_marks(line).strip(" =").strip(), number
                continue
            if _WIKITEXT_SECTION.match(line):
                continue
            text = _undo_wikitext_marks(line).strip()
            if text:
                paragraphs.append(text)
            continue
        text = line.strip()
        if text:
            if not paragraphs:
                start_line = number
            paragraphs.append(text)
        elif paragraphs:
            yield from finish()
            paragraphs = []
    yield from finish()


def _is_wikitext(probe: list[str]) -> bool:
    return any(_WIKITEXT_TITLE.match(line.rstrip("\r\n")) for line in probe)


def _iter_text_file(path: Path, counts: InputCounts) -> Iterator[Document]:
    def decoded_lines(stream: io.BufferedIOBase) -> Iterator[str]:
        for number, raw in enumerate(stream, start=1):
            counts.raw_bytes += len(raw)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}: not valid UTF-8 ({error.reason} at byte {error.start}); "
                    "convert the file to UTF-8, for example with iconv"
                ) from error

    with open_dump(path) as stream:
        lines = decoded_lines(stream)
        probe = [line for _, line in zip(range(_FORMAT_PROBE_LINES), lines)]
        wikitext = _is_wikitext(probe)
        if wikitext:
            logger.info("reading %s as WikiText (documents start at ' = Title = ' headings)", path)

        def all_lines() -> Iterator[str]:
            yield from probe
            yield from lines

        yield from documents_from_lines(all_lines(), wikitext=wikitext, source=str(path), counts=counts)


def _import_datasets():
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            "reading a Hugging Face dataset needs the `datasets` package: pip install -r requirements.txt"
        ) from error
    return datasets


def _load_hf_dataset(source: InputSource, split: str):
    datasets = _import_datasets()
    if source.kind == "hf_disk":
        dataset = datasets.load_from_disk(source.location)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(
                    f"{source.description} has no split {split!r}; its splits are {', '.join(dataset)}"
                )
            dataset = dataset[split]
        return dataset
    name, _, config = source.location.partition(":")
    try:
        # Not streamed: a prepared dataset is memory-mapped Arrow, so memory stays bounded,
        # and unlike streaming it can load from the local cache when offline.
        return datasets.load_dataset(name, config or None, split=split)
    except Exception as error:  # the library raises many types for "not found" and "offline"
        raise ValueError(
            f"could not load the Hugging Face dataset {source.location!r} (split {split!r}): {error}. "
            "Check the name (NAME or NAME:CONFIG); without network access the dataset must already be "
            "in the local Hugging Face cache"
        ) from error


def _iter_hf_dataset(source: InputSource, counts: InputCounts, split: str, text_column: str) -> Iterator[Document]:
    dataset = _load_hf_dataset(source, split)
    column_names = getattr(dataset, "column_names", None)
    if column_names is not None and text_column not in column_names:
        raise ValueError(
            f"{source.description} has no column {text_column!r}; its columns are {', '.join(column_names)}. "
            "Choose the text column with hf_text_column"
        )

    def texts() -> Iterator[str]:
        for row in dataset:
            if text_column not in row:
                raise ValueError(f"{source.description}: a row has no column {text_column!r}")
            text = row[text_column] or ""
            counts.raw_bytes += len(text.encode("utf-8"))
            yield text

    rows = texts()
    probe = [text for _, text in zip(range(_FORMAT_PROBE_LINES), rows)]
    if _is_wikitext(probe):
        # WikiText on the hub stores one line per row: read the rows like a WikiText file.
        logger.info("reading %s as WikiText lines (one row per line)", source.description)

        def all_lines() -> Iterator[str]:
            for text in _chain(probe, rows):
                yield from text.split("\n")

        yield from documents_from_lines(all_lines(), wikitext=True, source=source.description, counts=counts)
        return
    for index, text in enumerate(_chain(probe, rows)):
        paragraphs = [line.strip() for line in text.split("\n") if line.strip()]
        if paragraphs:
            counts.documents += 1
            yield Document(paragraphs, source=f"{source.description}, row {index}")
        else:
            counts.empty_documents += 1


def _chain(first: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from first
    yield from rest


def iter_documents(
    sources: Iterable[InputSource],
    *,
    counts: InputCounts,
    workers: int = 1,
    min_article_words: int = 20,
    hf_split: str = "train",
    hf_text_column: str = "text",
) -> Iterator[Document]:
    """Stream the documents of all inputs in order; ``counts`` is updated as they are read."""
    for source in sources:
        if source.kind == "wikipedia":
            before = counts.wikipedia.dump_bytes
            for document in iter_articles(
                source.location, workers=workers, min_words=min_article_words, counts=counts.wikipedia
            ):
                counts.documents += 1
                counts.raw_bytes += counts.wikipedia.dump_bytes - before
                before = counts.wikipedia.dump_bytes
                yield document
            counts.raw_bytes += counts.wikipedia.dump_bytes - before
        elif source.kind == "text":
            yield from _iter_text_file(Path(source.location), counts)
        else:
            yield from _iter_hf_dataset(source, counts, hf_split, hf_text_column)
