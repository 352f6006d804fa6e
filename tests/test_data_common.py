"""Helpers shared by the data pipeline tests: prepared data built once per test session.

Preparing real data takes seconds, so each prepared folder is built on first use and
reused by every test module that requests the same inputs and settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.document import Document
from pipelines.pretraining_data import prepare_pretraining_data
from pipelines.sources import InputCounts, iter_documents, resolve_inputs

WIKITEXT_DIR = Path("pretraining") / "wikitext-2"
ENWIKI_DUMP = Path("pretraining") / "enwiki" / "enwiki-sample-pages-articles.xml.bz2"

_prepared: dict[str, Path] = {}
_documents: dict[str, tuple[list[Document], InputCounts]] = {}


def read_documents_and_counts(path: Path) -> tuple[list[Document], InputCounts]:
    """The documents the pipeline reads from one input and its counts, read once per session."""
    if str(path) not in _documents:
        counts = InputCounts()
        documents = list(iter_documents(resolve_inputs([path]), counts=counts, workers=2))
        _documents[str(path)] = (documents, counts)
    return _documents[str(path)]


def read_documents(path: Path) -> list[Document]:
    """The documents the pipeline reads from one input, read once per session."""
    return read_documents_and_counts(path)[0]


def prepare_once(tmp_path_factory: pytest.TempPathFactory, inputs: list[Path], **settings) -> Path:
    """Prepare data for these inputs and settings once per session and return its folder."""
    key = json.dumps([[str(path) for path in inputs], settings], sort_keys=True, default=str)
    if key not in _prepared:
        output = tmp_path_factory.mktemp("prepared") / "data"
        defaults = {"vocab_size": 30522, "short_seq_prob": 0.1, "validation_fraction": 0.05, "seed": 7, "workers": 2}
        _prepared[key] = prepare_pretraining_data(inputs, output, **{**defaults, **settings})
    return _prepared[key]


def wikitext_valid_128(tmp_path_factory, shared_data: Path, bert_vocab_file: Path) -> Path:
    """WikiText-2 validation split at sequence length 128 with the BERT uncased vocabulary."""
    return prepare_once(
        tmp_path_factory, [shared_data / WIKITEXT_DIR / "valid.txt"],
        vocab_file=bert_vocab_file, sequence_length=128,
    )


def wikitext_512(tmp_path_factory, shared_data: Path, bert_vocab_file: Path) -> Path:
    """WikiText-2 validation and test splits at sequence length 512 with the BERT uncased vocabulary."""
    return prepare_once(
        tmp_path_factory,
        [shared_data / WIKITEXT_DIR / "valid.txt", shared_data / WIKITEXT_DIR / "test.txt"],
        vocab_file=bert_vocab_file, sequence_length=512,
    )


def enwiki_128(tmp_path_factory, shared_data: Path, bert_vocab_file: Path) -> Path:
    """The real Wikipedia dump excerpt at sequence length 128 with the BERT uncased vocabulary."""
    return prepare_once(
        tmp_path_factory, [shared_data / ENWIKI_DUMP], vocab_file=bert_vocab_file, sequence_length=128,
    )
