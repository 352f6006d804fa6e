"""Memory-mapped shards of pre-training sequences and the metadata that describes them.

Layout of a prepared data folder::

    metadata.json          vocabulary, tokenizer settings, sequence length, counts
    vocab.txt              the WordPiece vocabulary (one token per line)
    train/shard_00000/     one folder per shard, each a set of .npy arrays
    validation/shard_00000/

A shard stores the arrays of ``pipelines.instances.SequenceArrays`` as ``.npy`` files,
read with ``np.load(mmap_mode="r")``, so opening a split costs milliseconds whatever its
size and data-loader workers share the page cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.instances import SequenceArrays

METADATA_FILE = "metadata.json"
DATA_FORMAT = "groupbert-pretraining-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "validation")
_ARRAYS = ("input_ids", "offsets", "segment_b_starts", "next_sentence_labels", "document_ids", "next_document_ids")


def token_dtype_for(vocab_size: int) -> np.dtype:
    """Return the smallest unsigned type that can store every token id."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def write_shard(directory: Path, sequences: SequenceArrays, token_dtype: np.dtype) -> dict:
    """Write one shard folder and return its entry for the metadata."""
    directory.mkdir(parents=True)
    for name in _ARRAYS:
        array = getattr(sequences, name)
        if name == "input_ids":
            array = array.astype(token_dtype, copy=False)
        np.save(directory / f"{name}.npy", array)
    return {"sequences": len(sequences), "tokens": int(sequences.offsets[-1])}


@dataclass(frozen=True)
class PreparedDataInfo:
    """Facts about a prepared data folder that the trainer needs."""

    path: Path
    vocab_file: Path
    vocab_size: int
    lowercase: bool
    strip_accents: bool
    sequence_length: int
    next_sentence_prediction: bool
    special_token_ids: dict[str, int]
    counts: dict[str, dict[str, int]]
    metadata: dict


def is_prepared_data(path: str | os.PathLike) -> bool:
    """Tell whether ``path`` is a folder of prepared pre-training data (has metadata.json)."""
    return (Path(path) / METADATA_FILE).is_file()


def load_metadata(path: str | os.PathLike) -> dict:
    """Read and check the raw metadata of a prepared data folder."""
    path = Path(path)
    file = path / METADATA_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{path} is not prepared pre-training data: {METADATA_FILE} is missing. Prepare it with "
            "`python -m pipelines.pretraining_data`"
        )
    try:
        metadata = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON ({error}); prepare the data again") from error
    if metadata.get("format") != DATA_FORMAT:
        raise ValueError(f"{file} does not describe {DATA_FORMAT} data (format {metadata.get('format')!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{file} has format version {metadata.get('format_version')}, this code reads version "
            f"{FORMAT_VERSION}; prepare the data again"
        )
    return metadata


def read_metadata(path: str | os.PathLike) -> PreparedDataInfo:
    """Read a prepared data folder's metadata: vocabulary, settings and counts."""
    path = Path(path).resolve()
    metadata = load_metadata(path)
    tokenizer = metadata["tokenizer"]
    counts = {
        split: {key: entry[key] for key in ("documents", "sequences", "tokens")}
        for split, entry in metadata["splits"].items()
    }
    return PreparedDataInfo(
        path=path,
        vocab_file=path / tokenizer["vocab_file"],
        vocab_size=int(tokenizer["vocab_size"]),
        lowercase=bool(tokenizer["lowercase"]),
        strip_accents=bool(tokenizer["strip_accents"]),
        sequence_length=int(metadata["sequence_length"]),
        next_sentence_prediction=bool(metadata["next_sentence_prediction"]),
        special_token_ids=dict(tokenizer["special_token_ids"]),
        counts=counts,
        metadata=metadata,
    )


class ShardedSequences:
    """Random access to the sequences of one split, across its shards.

    Memory maps open lazily, so the object pickles cheaply into data-loader workers.
    """

    def __init__(self, data_dir: str | os.PathLike, split: str):
        self.data_dir = Path(data_dir).resolve()
        metadata = load_metadata(self.data_dir)
        if split not in metadata["splits"]:
            raise ValueError(f"{self.data_dir} has no split {split!r}; it has {', '.join(metadata['splits'])}")
        self.split = split
        entry = metadata["splits"][split]
        self.shard_paths = [self.data_dir / shard["path"] for shard in entry["shards"]]
        counts = np.asarray([shard["sequences"] for shard in entry["shards"]], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._arrays: list[dict[str, np.ndarray]] | None = None
        self._lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None
        state["_lengths"] = None
        return state

    def _open(self) -> list[dict[str, np.ndarray]]:
        if self._arrays is None:
            arrays = []
            for shard in self.shard_paths:
                try:
                    arrays.append({name: np.load(shard / f"{name}.npy", mmap_mode="r") for name in _ARRAYS})
                except FileNotFoundError as error:
                    raise FileNotFoundError(f"shard {shard} is incomplete ({error}); prepare the data again") from error
            self._arrays = arrays
        return self._arrays

    def array(self, name: str) -> np.ndarray:
        """Concatenate one per-sequence array (``segment_b_starts``, ``document_ids``, ...) over all shards."""
        if name in ("input_ids", "offsets"):
            raise ValueError(f"{name} is not a per-sequence array")
        parts = [np.asarray(shard[name]) for shard in self._open()]
        return np.concatenate(parts) if parts else np.zeros(0)

    @property
    def lengths(self) -> np.ndarray:
        """Length of every sequence, special tokens included (int32)."""
        if self._lengths is None:
            parts = [np.diff(np.asarray(shard["offsets"])).astype(np.int32) for shard in self._open()]
            self._lengths = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        return self._lengths

    def locate(self, index: int) -> tuple[int, int]:
        """Return (shard number, index within the shard) of a sequence."""
        if not 0 <= index < len(self):
            raise IndexError(f"sequence {index} is out of range for {len(self)} sequences")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return shard, index - int(self._starts[shard])

    def get(self, index: int) -> tuple[np.ndarray, int, int]:
        """Return (token ids, start of segment B, stored next-sentence label) of one sequence."""
        shard, local = self.locate(index)
        arrays = self._open()[shard]
        start, end = arrays["offsets"][local], arrays["offsets"][local + 1]
        ids = np.asarray(arrays["input_ids"][start:end], dtype=np.int64)
        return ids, int(arrays["segment_b_starts"][local]), int(arrays["next_sentence_labels"][local])
