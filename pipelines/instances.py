"""BERT pre-training sequences from tokenised documents.

A document is a list of segments (the token ids of its sentences). Sequences are built
the way the original BERT data preparation builds them:

- Each sequence aims at a target length: the maximum (``sequence_length`` minus the
  special tokens) or, with probability ``short_seq_prob``, a length drawn uniformly
  from 2 to the maximum, so the model also trains on short inputs. The target is drawn
  afresh for every sequence (BERT draws it once per document).
- Whole segments are gathered until the target is reached or the document ends.
- With next-sentence prediction, the gathered segments are split at a random segment
  boundary into A and B. Half of the time B is replaced by text from a random position
  of another document (label 1, "random next"). The segments not used then go back to
  the document for the next sequence. A chunk of one segment cannot be split, so it
  always gets a random B. A document of only one sentence therefore yields only
  random-next pairs, which the caller must watch for.
- A random B never comes from the document of A: it is drawn from the other
  documents of the same buffer.
- Pairs longer than the maximum are truncated one token at a time from the longer
  segment, at its front or back at random (BERT's rule). Truncated tokens are counted.

Layout of a sequence: ``[CLS] A [SEP] B [SEP]`` with token type 0 up to the first
``[SEP]`` and 1 after it, or ``[CLS] A [SEP]`` without next-sentence prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

# Stored next-sentence label of sequences built without next-sentence prediction.
NO_NEXT_SENTENCE_LABEL = -1


@dataclass
class PairStatistics:
    """Counts over the sequences built for one split."""

    documents: int = 0
    single_segment_documents: int = 0
    segments: int = 0
    sequences: int = 0
    random_next: int = 0
    forced_random_next: int = 0
    tokens: int = 0
    truncated_tokens: int = 0

    def add(self, other: "PairStatistics") -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SequenceArrays:
    """Sequences in flat arrays, the layout of one shard.

    ``input_ids[offsets[i]:offsets[i + 1]]`` is sequence i with its special tokens.
    Token type 1 starts at ``segment_b_starts[i]``, which equals the length when there is
    no segment B. ``next_document_ids[i]`` is the document that segment B came from.
    """

    input_ids: np.ndarray
    offsets: np.ndarray
    segment_b_starts: np.ndarray
    next_sentence_labels: np.ndarray
    document_ids: np.ndarray
    next_document_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1


class PairBuilder:
    """Builds BERT pre-training sequences from tokenised documents."""

    def __init__(
        self,
        *,
        sequence_length: int,
        short_seq_prob: float,
        next_sentence_prediction: bool,
        cls_id: int,
        sep_id: int,
    ):
        minimum = 5 if next_sentence_prediction else 3
        if sequence_length < minimum:
            raise ValueError(
                f"sequence_length {sequence_length} is too short: a sequence needs at least {minimum} tokens "
                f"({'[CLS] A [SEP] B [SEP]' if next_sentence_prediction else '[CLS] A [SEP]'})"
            )
        if not 0.0 <= short_seq_prob <= 1.0:
            raise ValueError(f"short_seq_prob must lie in [0, 1], got {short_seq_prob}")
        self.sequence_length = sequence_length
        self.short_seq_prob = short_seq_prob
        self.next_sentence_prediction = next_sentence_prediction
        self.cls_id = cls_id
        self.sep_id = sep_id
        # Room for text after [CLS] and one or two [SEP].
        self.max_text_tokens = sequence_length - (3 if next_sentence_prediction else 2)

    def build(
        self,
        documents: Sequence[Sequence[np.ndarray]],
        document_ids: Sequence[int],
        rng: np.random.Generator,
        *,
        extra_documents: Sequence[Sequence[np.ndarray]] = (),
        extra_document_ids: Sequence[int] = (),
        statistics: PairStatistics | None = None,
    ) -> SequenceArrays:
        """Build the sequences of ``documents``.

        Random next segments come from ``documents`` and ``extra_documents`` (documents
        already written, kept so that a final small buffer still has other documents to
        draw from), never from the sequence's own document. Every document must hold at
        least one non-empty segment.
        """
        statistics = statistics if statistics is not None else PairStatistics()
        pool = list(extra_documents) + list(documents)
        pool_ids = list(extra_document_ids) + list(document_ids)
        if self.next_sentence_prediction and len(pool) < 2:
            raise ValueError(
                "next-sentence pairs need at least two documents, because a random next segment must "
                f"come from a different document, but only {len(pool)} document(s) are available"
            )
        sequences: list[np.ndarray] = []
        b_starts: list[int] = []
        labels: list[int] = []
        next_ids: list[int] = []
        own_ids: list[int] = []
        offset = len(extra_documents)
        for index, document in enumerate(documents):
            statistics.documents += 1
            statistics.segments += len(document)
            if len(document) == 1:
                statistics.single_segment_documents += 1
            first = len(sequences)
            self._document_sequences(offset + index, pool, pool_ids, rng, sequences, b_starts, labels, next_ids, statistics)
            own_ids.extend([document_ids[index]] * (len(sequences) - first))

        lengths = np.fromiter((len(sequence) for sequence in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        statistics.sequences += len(sequences)
        statistics.tokens += int(offsets[-1])
        label_array = np.asarray(labels, dtype=np.int8)
        statistics.random_next += int(np.count_nonzero(label_array == 1))
        return SequenceArrays(
            input_ids=np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int32),
            offsets=offsets,
            segment_b_starts=np.asarray(b_starts, dtype=np.int32),
            next_sentence_labels=label_array,
            document_ids=np.asarray(own_ids, dtype=np.int64),
            next_document_ids=np.asarray(next_ids, dtype=np.int64),
        )

    def _draw_target(self, rng: np.random.Generator) -> int:
        if self.short_seq_prob > 0 and rng.random() < self.short_seq_prob:
            return int(rng.integers(2, self.max_text_tokens + 1)) if self.max_text_tokens > 2 else self.max_text_tokens
        return self.max_text_tokens

    def _document_sequences(
        self, position, pool, pool_ids, rng, sequences, b_starts, labels, next_ids, statistics
    ) -> None:
        document = pool[position]
        chunk: list[np.ndarray] = []
        chunk_tokens = 0
        target = self._draw_target(rng)
        index = 0
        while index < len(document):
            segment = document[index]
            chunk.append(segment)
            chunk_tokens += len(segment)
            if index == len(document) - 1 or chunk_tokens >= target:
                if self.next_sentence_prediction:
                    unused = self._append_pair(chunk, target, position, pool, pool_ids, rng, sequences, b_starts, labels, next_ids, statistics)
                    # Segments left out by a random next pair are used for the next sequence.
                    index -= unused
                else:
                    tokens_a = _truncate_single(np.concatenate(chunk), self.max_text_tokens, rng, statistics)
                    sequences.append(self._layout(tokens_a, None))
                    b_starts.append(len(tokens_a) + 2)
                    labels.append(NO_NEXT_SENTENCE_LABEL)
                    next_ids.append(pool_ids[position])
                chunk = []
                chunk_tokens = 0
                target = self._draw_target(rng)
            index += 1

    def _append_pair(
        self, chunk, target, position, pool, pool_ids, rng, sequences, b_starts, labels, next_ids, statistics
    ) -> int:
        a_end = 1 if len(chunk) == 1 else int(rng.integers(1, len(chunk)))
        tokens_a = np.concatenate(chunk[:a_end])
        unused = 0
        if len(chunk) == 1 or rng.random() < 0.5:
            if len(chunk) == 1:
                statistics.forced_random_next += 1
            other = int(rng.integers(len(pool) - 1))
            if other >= position:
                other += 1
            tokens_b = _take_segments(pool[other], max(1, target - len(tokens_a)), rng)
            label = 1
            next_id = pool_ids[other]
            unused = len(chunk) - a_end
        else:
            tokens_b = np.concatenate(chunk[a_end:])
            label = 0
            next_id = pool_ids[position]
        tokens_a, tokens_b = _truncate_pair(tokens_a, tokens_b, self.max_text_tokens, rng, statistics)
        sequences.append(self._layout(tokens_a, tokens_b))
        b_starts.append(len(tokens_a) + 2)
        labels.append(label)
        next_ids.append(next_id)
        return unused

    def _layout(self, tokens_a: np.ndarray, tokens_b: np.ndarray | None) -> np.ndarray:
        length_b = 0 if tokens_b is None else len(tokens_b) + 1
        sequence = np.empty(len(tokens_a) + 2 + length_b, dtype=np.int32)
        sequence[0] = self.cls_id
        sequence[1:1 + len(tokens_a)] = tokens_a
        sequence[1 + len(tokens_a)] = self.sep_id
        if tokens_b is not None:
            sequence[2 + len(tokens_a):-1] = tokens_b
            sequence[-1] = self.sep_id
        return sequence


def _take_segments(document: Sequence[np.ndarray], target: int, rng: np.random.Generator) -> np.ndarray:
    """Segments of ``document`` from a random start until ``target`` tokens or its end."""
    start = int(rng.integers(len(document)))
    taken = []
    count = 0
    for segment in document[start:]:
        taken.append(segment)
        count += len(segment)
        if count >= target:
            break
    return np.concatenate(taken)


def _trim(tokens: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Remove ``count`` tokens, each from the front or the back with equal probability."""
    if count <= 0:
        return tokens
    front = int(rng.binomial(count, 0.5))
    return tokens[front:len(tokens) - (count - front)]


def _truncate_single(tokens: np.ndarray, limit: int, rng: np.random.Generator, statistics: PairStatistics) -> np.ndarray:
    excess = len(tokens) - limit
    if excess <= 0:
        return tokens
    statistics.truncated_tokens += excess
    return _trim(tokens, excess, rng)


def _truncate_pair(
    tokens_a: np.ndarray, tokens_b: np.ndarray, limit: int, rng: np.random.Generator, statistics: PairStatistics
) -> tuple[np.ndarray, np.ndarray]:
    """Shorten the longer segment one token at a time (B on ties) until the pair fits.

    The result is computed in closed form: the longer segment first loses the length
    difference, and the rest alternates, B first.
    """
    length_a, length_b = len(tokens_a), len(tokens_b)
    excess = length_a + length_b - limit
    if excess <= 0:
        return tokens_a, tokens_b
    statistics.truncated_tokens += excess
    difference = abs(length_a - length_b)
    if excess <= difference:
        remove_a, remove_b = (excess, 0) if length_a > length_b else (0, excess)
    else:
        rest = excess - difference
        remove_b = (rest + 1) // 2
        remove_a = rest // 2
        if length_a > length_b:
            remove_a += difference
        else:
            remove_b += difference
    return _trim(tokens_a, remove_a, rng), _trim(tokens_b, remove_b, rng)
