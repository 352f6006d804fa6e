"""Shard builder: raw inputs to tokenised, memory-mapped BERT pre-training data.

``prepare_pretraining_data`` reads the inputs (see ``pipelines.sources``), splits
paragraphs into sentences, tokenises them with WordPiece, holds out whole documents for
validation, builds next-sentence pairs (see ``pipelines.instances``) and writes shards
plus ``metadata.json`` (see ``pipelines.shards``).

Memory stays bounded: documents are processed in buffers of about ``block_megabytes``
of text, and random next segments are drawn from the documents of the current buffer.
Inputs are read once, except that training a vocabulary first reads up to
``vocab_training_megabytes`` of training text, which is cached on disk for the second
pass.

The build writes into a hidden staging folder beside ``output_dir`` and renames it into
place when complete, so a crash never leaves a folder that looks prepared. Calling it
again with the same inputs and settings reuses the data; different settings are an
error unless ``overwrite`` is set.

Run ``python -m pipelines.pretraining_data --help`` for the command line.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import pickle
import shutil
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from pipelines.document import Document
from pipelines.instances import PairBuilder, PairStatistics
from pipelines.sentences import split_sentences
from pipelines.shards import (
    DATA_FORMAT,
    FORMAT_VERSION,
    METADATA_FILE,
    PreparedDataInfo,
    is_prepared_data,
    load_metadata,
    read_metadata,
    token_dtype_for,
    write_shard,
)
from pipelines.sources import InputCounts, InputSource, iter_documents, resolve_inputs
from pipelines.tokenization import WordPieceTokenizer, load_tokenizer, train_wordpiece

__all__ = ["prepare_pretraining_data", "is_prepared_data", "read_metadata", "PreparedDataInfo", "main"]

logger = logging.getLogger(__name__)

# Documents kept from a written buffer so that a final buffer with a single document
# still has other documents to draw random next segments from.
_CARRYOVER_DOCUMENTS = 64
# With next-sentence prediction, a share of single-sentence documents at or above this
# is an error: nearly every pair would be a forced random next pair.
_SINGLE_SEGMENT_ERROR_SHARE = 0.9
# Random-next shares outside this band are reported as a warning.
_RANDOM_NEXT_BAND = (0.4, 0.6)
_MIN_SEQUENCES_FOR_BALANCE_CHECK = 100
_SPLIT_SEED_CODES = {"train": 1, "validation": 2}


def prepare_pretraining_data(
    input_files: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    vocab_file: str | os.PathLike | None,
    vocab_size: int,
    sequence_length: int,
    short_seq_prob: float = 0.1,
    next_sentence_prediction: bool = True,
    validation_fraction: float,
    seed: int,
    overwrite: bool = False,
    lowercase: bool | None = None,
    strip_accents: bool | None = None,
    workers: int | None = None,
    block_megabytes: float = 64.0,
    vocab_training_megabytes: float = 1024.0,
    min_article_words: int = 20,
    hf_split: str = "train",
    hf_text_column: str = "text",
) -> Path:
    """Build train and validation shards under ``output_dir`` and return its path.

    ``input_files`` lists dumps, text files or folders and Hugging Face dataset names; an
    empty list means the built-in Wikipedia sample. A single prepared data folder is
    returned as it is, after checking its sequence length and next-sentence setting.
    ``vocab_file`` is a vocabulary file or a Hugging Face tokenizer folder. With ``None``,
    a WordPiece vocabulary of at most ``vocab_size`` entries is trained on the training
    documents and saved in ``output_dir`` (``vocab_size`` is unused otherwise). ``validation_fraction`` of the documents
    (at least one, or two with next-sentence prediction) are held out whole.
    ``lowercase`` and ``strip_accents`` override the vocabulary's convention.
    """
    _check_arguments(sequence_length, short_seq_prob, validation_fraction, vocab_size, vocab_file, block_megabytes, seed)
    output_dir = Path(output_dir).expanduser().resolve()
    workers = workers or os.cpu_count() or 1

    inputs = [str(item) for item in input_files]
    if len(inputs) == 1 and is_prepared_data(inputs[0]):
        return _use_prepared_input(Path(inputs[0]), sequence_length, next_sentence_prediction)
    if any(is_prepared_data(item) for item in inputs):
        raise ValueError(
            "input_files mixes prepared data folders with raw inputs; give either one prepared folder or raw inputs"
        )
    sources = resolve_inputs(inputs)

    settings = {
        "format_version": FORMAT_VERSION,
        "inputs": [source.fingerprint() for source in sources],
        "vocabulary": _vocabulary_fingerprint(vocab_file, vocab_size),
        "lowercase": lowercase,
        "strip_accents": strip_accents,
        "sequence_length": sequence_length,
        "short_seq_prob": short_seq_prob,
        "next_sentence_prediction": next_sentence_prediction,
        "validation_fraction": validation_fraction,
        "seed": seed,
        "block_megabytes": block_megabytes,
        "vocab_training_megabytes": vocab_training_megabytes if vocab_file is None else None,
        "min_article_words": min_article_words,
        "hf_split": hf_split,
        "hf_text_column": hf_text_column,
    }
    # A JSON round trip makes tuples and lists compare equal with the stored copy.
    settings = json.loads(json.dumps(settings))

    if is_prepared_data(output_dir):
        stored = load_metadata(output_dir).get("build_settings")
        if stored == settings:
            logger.info("reusing the prepared data in %s: it was built from the same inputs and settings", output_dir)
            return output_dir
        if not overwrite:
            raise ValueError(
                f"{output_dir} contains data prepared with different inputs or settings ({_describe_differences(stored, settings)}). "
                "Choose another output folder, remove this one, or pass overwrite=True (--overwrite)"
            )
        logger.info("rebuilding %s because its settings differ (%s)", output_dir, _describe_differences(stored, settings))
    elif output_dir.exists() and not overwrite:
        if not output_dir.is_dir():
            raise FileExistsError(f"output path {output_dir} is a file; choose a folder for the prepared data")
        if any(output_dir.iterdir()):
            raise FileExistsError(
                f"output folder {output_dir} is not empty and contains no prepared data; choose another folder, "
                "empty it, or pass overwrite=True (--overwrite)"
            )

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(output_dir)
    staging = output_dir.parent / f".{output_dir.name}.partial-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        start = time.perf_counter()
        _build(
            staging,
            sources,
            settings,
            vocab_file=vocab_file,
            vocab_size=vocab_size,
            lowercase=lowercase,
            strip_accents=strip_accents,
            sequence_length=sequence_length,
            short_seq_prob=short_seq_prob,
            next_sentence_prediction=next_sentence_prediction,
            validation_fraction=validation_fraction,
            seed=seed,
            workers=workers,
            block_bytes=int(block_megabytes * 1e6),
            vocab_training_bytes=int(vocab_training_megabytes * 1e6),
            min_article_words=min_article_words,
            hf_split=hf_split,
            hf_text_column=hf_text_column,
        )
        logger.info("prepared data in %.1f s", time.perf_counter() - start)
        return _commit(staging, output_dir, settings, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _check_arguments(sequence_length, short_seq_prob, validation_fraction, vocab_size, vocab_file, block_megabytes, seed):
    if not isinstance(sequence_length, int) or sequence_length < 5:
        raise ValueError(f"sequence_length must be an integer of at least 5, got {sequence_length!r}")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob must lie in [0, 1], got {short_seq_prob}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {validation_fraction}")
    if vocab_file is None and (not isinstance(vocab_size, int) or vocab_size < 6):
        raise ValueError(f"vocab_size must be an integer of at least 6 to train a vocabulary, got {vocab_size!r}")
    if block_megabytes <= 0:
        raise ValueError(f"block_megabytes must be positive, got {block_megabytes}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _use_prepared_input(path: Path, sequence_length: int, next_sentence_prediction: bool) -> Path:
    info = read_metadata(path)
    if info.sequence_length != sequence_length:
        raise ValueError(
            f"prepared data {info.path} has sequence length {info.sequence_length}, but sequence_length "
            f"{sequence_length} was requested; prepare the raw inputs again at {sequence_length}"
        )
    if next_sentence_prediction and not info.next_sentence_prediction:
        raise ValueError(
            f"prepared data {info.path} was built without next-sentence pairs, but next_sentence_prediction is on; "
            "prepare it again with next-sentence prediction or switch it off"
        )
    logger.info("input %s is prepared data; using it as it is", info.path)
    return info.path


def _vocabulary_fingerprint(vocab_file, vocab_size) -> dict:
    if vocab_file is None:
        return {"trained": True, "vocab_size": vocab_size}
    path = Path(vocab_file).expanduser().resolve()
    if path.is_dir():
        files = [path / name for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json") if (path / name).is_file()]
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"vocab_file not found: {path} is neither a vocabulary file nor a tokenizer folder")
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(file.name.encode())
        digest.update(file.read_bytes())
    # Content, not location, identifies the vocabulary, so a moved copy still matches.
    return {"trained": False, "sha256": digest.hexdigest()}


def _describe_differences(stored: dict | None, requested: dict) -> str:
    if not isinstance(stored, dict):
        return "the stored settings are missing"
    keys = sorted(set(stored) | set(requested))
    parts = [
        f"{key}: stored {json.dumps(stored.get(key))} vs requested {json.dumps(requested.get(key))}"
        for key in keys if stored.get(key) != requested.get(key)
    ]
    return "; ".join(parts)


def _remove_stale_staging(output_dir: Path) -> None:
    """Delete staging folders left by crashed builds on this host (their process is gone)."""
    prefix = f".{output_dir.name}.partial-{socket.gethostname()}-"
    for candidate in output_dir.parent.glob(f"{prefix}*"):
        pid_text = candidate.name[len(prefix):].split("-", 1)[0]
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            logger.info("removing %s, left by an interrupted build", candidate)
            shutil.rmtree(candidate, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _commit(staging: Path, output_dir: Path, settings: dict, overwrite: bool) -> Path:
    """Move the finished staging folder to ``output_dir`` in one rename."""
    old = None
    if is_prepared_data(output_dir) and load_metadata(output_dir).get("build_settings") == settings:
        # Another process (say, another data-parallel rank) finished the same build first.
        logger.info("another process prepared %s with the same settings meanwhile; using its data", output_dir)
        return output_dir
    if output_dir.exists() and overwrite and any(output_dir.iterdir()):
        old = output_dir.parent / f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(output_dir, old)
    try:
        # rename(2) replaces an empty folder and fails on a non-empty one.
        os.rename(staging, output_dir)
    except OSError as error:
        if is_prepared_data(output_dir) and load_metadata(output_dir).get("build_settings") == settings:
            logger.info("another process prepared %s with the same settings meanwhile; using its data", output_dir)
            return output_dir
        raise FileExistsError(
            f"could not move the prepared data into {output_dir} ({error}); another process may be writing "
            "there. Remove the folder or choose another one"
        ) from error
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("prepared data written to %s", output_dir)
    return output_dir


class _ValidationSplitter:
    """Chooses held-out documents block by block, reproducibly from the seed.

    After each block the held-out count is round(fraction x documents seen so far), at
    least ``minimum`` once the fraction is positive, so the split is exact for small
    corpora and stratified over a large one.
    """

    def __init__(self, fraction: float, seed: int, minimum: int):
        self.fraction = fraction
        self.seed = seed
        self.minimum = minimum
        self.seen = 0
        self.held_out = 0

    def assign(self, block_index: int, count: int) -> np.ndarray:
        """Boolean mask over a block's documents: True for validation."""
        mask = np.zeros(count, dtype=bool)
        self.seen += count
        if self.fraction <= 0 or count == 0:
            return mask
        target = max(self.minimum, int(np.floor(self.fraction * self.seen + 0.5)))
        take = min(max(0, target - self.held_out), count)
        if take:
            rng = np.random.default_rng([self.seed, 0, block_index])
            mask[rng.choice(count, size=take, replace=False)] = True
            self.held_out += take
        return mask


class _SplitWriter:
    """Buffers the tokenised documents of one split and writes them as shards of sequences."""

    def __init__(self, name: str, directory: Path, builder: PairBuilder, *, seed: int, flush_bytes: int, token_dtype):
        self.name = name
        self.directory = directory
        self.builder = builder
        self.seed = seed
        self.flush_bytes = flush_bytes
        self.token_dtype = token_dtype
        self.statistics = PairStatistics()
        self.shards: list[dict] = []
        self._documents: list[list[np.ndarray]] = []
        self._document_ids: list[int] = []
        self._buffered_bytes = 0
        self._carryover: list[list[np.ndarray]] = []
        self._carryover_ids: list[int] = []

    def add(self, documents: list[list[np.ndarray]], document_ids: list[int], text_bytes: int) -> None:
        self._documents.extend(documents)
        self._document_ids.extend(document_ids)
        self._buffered_bytes += text_bytes
        if self._buffered_bytes >= self.flush_bytes and len(self._documents) >= 2:
            self._flush()

    def finish(self) -> None:
        if self._documents:
            if self.builder.next_sentence_prediction and len(self._documents) + len(self._carryover) < 2:
                raise ValueError(
                    f"the {self.name} split has a single document, so next-sentence pairs cannot draw a random "
                    "next segment from a different document. Give more documents (text files separate documents "
                    "with blank lines), lower validation_fraction, or switch off next-sentence prediction"
                )
            self._flush()
        if self.builder.next_sentence_prediction:
            self._check_balance()

    def _flush(self) -> None:
        index = len(self.shards)
        rng = np.random.default_rng([self.seed, _SPLIT_SEED_CODES[self.name], index])
        sequences = self.builder.build(
            self._documents,
            self._document_ids,
            rng,
            extra_documents=self._carryover,
            extra_document_ids=self._carryover_ids,
            statistics=self.statistics,
        )
        relative = f"{self.name}/shard_{index:05d}"
        entry = write_shard(self.directory / f"shard_{index:05d}", sequences, self.token_dtype)
        self.shards.append({"path": relative, **entry})
        if self.builder.next_sentence_prediction:
            self._check_single_segments()
        keep = rng.choice(len(self._documents), size=min(_CARRYOVER_DOCUMENTS, len(self._documents)), replace=False)
        self._carryover = [self._documents[i] for i in keep]
        self._carryover_ids = [self._document_ids[i] for i in keep]
        self._documents, self._document_ids, self._buffered_bytes = [], [], 0

    def _check_single_segments(self) -> None:
        documents = self.statistics.documents
        single = self.statistics.single_segment_documents
        if documents >= 2 and single >= _SINGLE_SEGMENT_ERROR_SHARE * documents:
            raise ValueError(
                f"{single} of {documents} {self.name} documents hold a single sentence, so nearly every "
                "next-sentence pair would get a random next segment and the labels would be meaningless. "
                "Check the input format (a blank line separates documents, not sentences) or switch off "
                "next-sentence prediction"
            )

    def _check_balance(self) -> None:
        sequences = self.statistics.sequences
        if sequences < _MIN_SEQUENCES_FOR_BALANCE_CHECK:
            return
        share = self.statistics.random_next / sequences
        low, high = _RANDOM_NEXT_BAND
        if not low <= share <= high:
            warnings.warn(
                f"{share:.0%} of the {sequences} {self.name} pairs have a random next segment (expected about 50%); "
                f"{self.statistics.forced_random_next} were forced because their chunk held a single sentence, from "
                f"{self.statistics.single_segment_documents} single-sentence documents. Next-sentence labels are "
                "skewed; check that documents hold several sentences",
                RuntimeWarning,
                stacklevel=3,
            )

    def summary(self) -> dict:
        return {
            "shards": self.shards,
            "documents": self.statistics.documents,
            "sequences": self.statistics.sequences,
            "tokens": self.statistics.tokens,
            "statistics": self.statistics.as_dict(),
        }


def _blocks(documents: Iterable[Document], block_bytes: int) -> Iterator[list[Document]]:
    block: list[Document] = []
    size = 0
    for document in documents:
        block.append(document)
        size += document.text_length()
        if size >= block_bytes:
            yield block
            block, size = [], 0
    if block:
        yield block


def _tokenise_block(block: list[Document], tokenizer: WordPieceTokenizer) -> tuple[list[list[np.ndarray]], int]:
    """Sentence-split and tokenise a block; returns per-document segments and the sentence count."""
    sentences: list[str] = []
    bounds = [0]
    for document in block:
        for paragraph in document.paragraphs:
            sentences.extend(split_sentences(paragraph))
        bounds.append(len(sentences))
    encoded = tokenizer.encode_batch(sentences)
    documents = [
        [segment for segment in encoded[bounds[i]:bounds[i + 1]] if len(segment)]
        for i in range(len(block))
    ]
    return documents, len(sentences)


def _train_vocabulary(
    blocks: Iterator[list[Document]],
    cache_dir: Path,
    splitter: _ValidationSplitter,
    *,
    vocab_size: int,
    lowercase: bool | None,
    strip_accents: bool | None,
    training_bytes: int,
) -> tuple[WordPieceTokenizer, list[Path]]:
    """Train on the training documents of the first blocks; cache those blocks for the second pass."""
    cache_dir.mkdir()
    cached: list[Path] = []

    def training_texts() -> Iterator[str]:
        seen = 0
        for block_index, block in enumerate(blocks):
            path = cache_dir / f"block_{block_index:06d}.pickle"
            with open(path, "wb") as handle:
                pickle.dump(block, handle, protocol=pickle.HIGHEST_PROTOCOL)
            cached.append(path)
            held_out = splitter.assign(block_index, len(block))
            for document, is_validation in zip(block, held_out):
                if not is_validation:
                    yield from document.paragraphs
                    seen += document.text_length()
            if seen >= training_bytes:
                return

    tokenizer = train_wordpiece(
        training_texts(), vocab_size, lowercase=True if lowercase is None else lowercase, strip_accents=strip_accents
    )
    logger.info("trained a WordPiece vocabulary of %d entries on the training documents", tokenizer.vocab_size)
    return tokenizer, cached


def _replay(cached: list[Path]) -> Iterator[list[Document]]:
    for path in cached:
        with open(path, "rb") as handle:
            block = pickle.load(handle)
        path.unlink()
        yield block


def _build(
    staging: Path,
    sources: list[InputSource],
    settings: dict,
    *,
    vocab_file,
    vocab_size: int,
    lowercase: bool | None,
    strip_accents: bool | None,
    sequence_length: int,
    short_seq_prob: float,
    next_sentence_prediction: bool,
    validation_fraction: float,
    seed: int,
    workers: int,
    block_bytes: int,
    vocab_training_bytes: int,
    min_article_words: int,
    hf_split: str,
    hf_text_column: str,
) -> None:
    counts = InputCounts()
    documents = iter_documents(
        sources, counts=counts, workers=workers, min_article_words=min_article_words,
        hf_split=hf_split, hf_text_column=hf_text_column,
    )
    blocks: Iterator[list[Document]] = _blocks(documents, block_bytes)
    minimum_held_out = 2 if next_sentence_prediction else 1

    if vocab_file is None:
        tokenizer, cached = _train_vocabulary(
            blocks, staging / "cache", _ValidationSplitter(validation_fraction, seed, minimum_held_out),
            vocab_size=vocab_size, lowercase=lowercase, strip_accents=strip_accents,
            training_bytes=vocab_training_bytes,
        )
        blocks = itertools.chain(_replay(cached), blocks)
    else:
        tokenizer = load_tokenizer(vocab_file, lowercase=lowercase, strip_accents=strip_accents)
    logger.info(
        "tokenizer: %s, %d entries, lowercase=%s, strip_accents=%s",
        tokenizer.source, tokenizer.vocab_size, tokenizer.lowercase, tokenizer.strip_accents,
    )

    ids = tokenizer.special_ids
    builder = PairBuilder(
        sequence_length=sequence_length, short_seq_prob=short_seq_prob,
        next_sentence_prediction=next_sentence_prediction, cls_id=ids.cls, sep_id=ids.sep,
    )
    token_dtype = token_dtype_for(tokenizer.vocab_size)
    writers = {
        name: _SplitWriter(name, staging / name, builder, seed=seed, flush_bytes=block_bytes, token_dtype=token_dtype)
        for name in ("train", "validation")
    }
    splitter = _ValidationSplitter(validation_fraction, seed, minimum_held_out)
    documents_without_tokens = 0
    sentences = 0
    next_document_id = 0
    start = time.perf_counter()
    for block_index, block in enumerate(blocks):
        held_out = splitter.assign(block_index, len(block))
        tokenised, block_sentences = _tokenise_block(block, tokenizer)
        sentences += block_sentences
        grouped: dict[str, tuple[list, list, int]] = {"train": ([], [], 0), "validation": ([], [], 0)}
        for document, segments, is_validation in zip(block, tokenised, held_out):
            document_id = next_document_id
            next_document_id += 1
            if not segments:
                documents_without_tokens += 1
                continue
            name = "validation" if is_validation else "train"
            docs, doc_ids, size = grouped[name]
            docs.append(segments)
            doc_ids.append(document_id)
            grouped[name] = (docs, doc_ids, size + document.text_length())
        for name, (docs, doc_ids, size) in grouped.items():
            writers[name].add(docs, doc_ids, size)
        elapsed = time.perf_counter() - start
        logger.info(
            "block %d: %d documents so far, %.1f MB of input read, %.2f MB/s",
            block_index, next_document_id, counts.raw_bytes / 1e6, counts.raw_bytes / 1e6 / max(elapsed, 1e-9),
        )

    shutil.rmtree(staging / "cache", ignore_errors=True)
    if counts.documents == 0:
        raise ValueError(f"the inputs hold no documents with text ({counts.summary()})")
    for writer in writers.values():
        writer.finish()
    if writers["train"].statistics.sequences == 0:
        raise ValueError(f"no training sequences were built; the inputs are too small ({counts.summary()})")
    if validation_fraction > 0 and writers["validation"].statistics.documents < minimum_held_out:
        raise ValueError(
            f"validation_fraction {validation_fraction} held out {writers['validation'].statistics.documents} "
            f"document(s) with text, but at least {minimum_held_out} are needed; give more documents or set "
            "validation_fraction to 0"
        )

    tokenizer.save_vocab(staging / "vocab.txt")
    metadata = {
        "format": DATA_FORMAT,
        "format_version": FORMAT_VERSION,
        "created_unix_time": int(time.time()),
        "build_settings": settings,
        "inputs": [source.description for source in sources],
        "tokenizer": {
            "vocab_file": "vocab.txt",
            "vocab_size": tokenizer.vocab_size,
            "lowercase": tokenizer.lowercase,
            "strip_accents": tokenizer.strip_accents,
            "source": tokenizer.source,
            "special_token_ids": ids.as_dict(),
            "subword_prefix": "##",
        },
        "sequence_length": sequence_length,
        "next_sentence_prediction": next_sentence_prediction,
        "token_dtype": token_dtype.name,
        "splits": {name: writer.summary() for name, writer in writers.items()},
        "input_counts": {
            "documents": counts.documents,
            "empty_documents_skipped": counts.empty_documents,
            "documents_without_tokens_skipped": documents_without_tokens,
            "sentences": sentences,
            "raw_bytes": counts.raw_bytes,
            "wikipedia": {
                "pages": counts.wikipedia.pages,
                "articles": counts.wikipedia.articles,
                "redirects": counts.wikipedia.redirects,
                "other_namespaces": counts.wikipedia.other_namespaces,
                "list_pages": counts.wikipedia.list_pages,
                "disambiguation_pages": counts.wikipedia.disambiguation_pages,
                "too_short": counts.wikipedia.too_short,
            },
        },
    }
    logger.info("%s", counts.summary())
    for name, writer in writers.items():
        stats = writer.statistics
        logger.info(
            "%s: %d documents, %d sequences, %d tokens, %d random next (%d forced), %d tokens truncated",
            name, stats.documents, stats.sequences, stats.tokens, stats.random_next,
            stats.forced_random_next, stats.truncated_tokens,
        )
    # metadata.json is written last: its presence marks the folder as complete.
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.pretraining_data",
        description=(
            "Prepare BERT pre-training data: read Wikipedia XML dumps, text files or folders and Hugging Face "
            "datasets, tokenise with WordPiece, build next-sentence pairs and write memory-mapped train and "
            "validation shards. Without inputs, the Wikipedia sample that ships with gensim is used."
        ),
    )
    parser.add_argument(
        "inputs", nargs="*",
        help="dump files, text files or folders, saved datasets, or Hugging Face dataset names (NAME or NAME:CONFIG)",
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="folder for the prepared data")
    parser.add_argument(
        "--vocab-file",
        help="WordPiece vocabulary file or Hugging Face tokenizer folder (default: train one on the corpus)",
    )
    parser.add_argument("--vocab-size", type=int, default=30522, help="size of a trained vocabulary (default: 30522)")
    parser.add_argument("--sequence-length", type=int, default=128, help="tokens per sequence (default: 128)")
    parser.add_argument(
        "--short-seq-prob", type=float, default=0.1,
        help="probability of a shorter random target length for a sequence (default: 0.1)",
    )
    parser.add_argument(
        "--no-next-sentence-prediction", action="store_true",
        help="build single-segment sequences without next-sentence labels",
    )
    parser.add_argument(
        "--validation-fraction", type=float, default=0.01,
        help="share of documents held out for validation (default: 0.01)",
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    casing = parser.add_mutually_exclusive_group()
    casing.add_argument("--lowercase", dest="lowercase", action="store_true", default=None, help="force lower-casing")
    casing.add_argument("--no-lowercase", dest="lowercase", action="store_false", help="force keeping case")
    accents = parser.add_mutually_exclusive_group()
    accents.add_argument("--strip-accents", dest="strip_accents", action="store_true", default=None, help="force accent stripping")
    accents.add_argument("--no-strip-accents", dest="strip_accents", action="store_false", help="force keeping accents")
    parser.add_argument("--workers", type=int, default=None, help="processes removing wiki markup (default: CPU cores)")
    parser.add_argument(
        "--block-megabytes", type=float, default=64.0,
        help="megabytes of text per processing buffer and shard (default: 64)",
    )
    parser.add_argument(
        "--vocab-training-megabytes", type=float, default=1024.0,
        help="megabytes of training text read to train a vocabulary (default: 1024)",
    )
    parser.add_argument(
        "--min-article-words", type=int, default=20,
        help="skip Wikipedia articles with fewer words after markup removal (default: 20)",
    )
    parser.add_argument("--hf-split", default="train", help="split of Hugging Face datasets (default: train)")
    parser.add_argument("--hf-text-column", default="text", help="text column of Hugging Face datasets (default: text)")
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder built with other settings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        path = prepare_pretraining_data(
            args.inputs,
            args.output_dir,
            vocab_file=args.vocab_file,
            vocab_size=args.vocab_size,
            sequence_length=args.sequence_length,
            short_seq_prob=args.short_seq_prob,
            next_sentence_prediction=not args.no_next_sentence_prediction,
            validation_fraction=args.validation_fraction,
            seed=args.seed,
            overwrite=args.overwrite,
            lowercase=args.lowercase,
            strip_accents=args.strip_accents,
            workers=args.workers,
            block_megabytes=args.block_megabytes,
            vocab_training_megabytes=args.vocab_training_megabytes,
            min_article_words=args.min_article_words,
            hf_split=args.hf_split,
            hf_text_column=args.hf_text_column,
        )
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    info = read_metadata(path)
    print(f"prepared data: {info.path}")
    print(f"vocabulary: {info.vocab_file} ({info.vocab_size} entries, lowercase={info.lowercase})")
    for split, numbers in info.counts.items():
        print(f"{split}: {numbers['documents']} documents, {numbers['sequences']} sequences, {numbers['tokens']} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
