"""Dynamic masked-language-model masking, applied when a sequence is loaded.

Rules, per sequence of ``n`` real tokens (special tokens included, padding excluded):

- the number of masked tokens is ``min(mask_tokens, max(1, round(mlm_probability * n)))``,
  where a half rounds up, and never more than the sequence's maskable tokens;
- special tokens ([CLS], [SEP], [PAD], [MASK], [UNK]) are never masked;
- each masked token becomes [MASK] with probability 0.8, a random token with
  probability 0.1 (drawn uniformly from the vocabulary without its bracketed special
  and unused entries), and stays unchanged with probability 0.1;
- with whole-word masking, words (a token and its following "##" pieces) are chosen in
  random order and taken whole while they fit the count, so fewer tokens than the count
  may be masked. If no word fits, the first pieces of the shortest word are masked so
  that every sequence still gets at least one masked token.

Positions and labels are padded to a static number of slots: ``mask_tokens`` per
unpacked sequence, or ``packed_mask_slots(...)`` per packed row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Label of a padded mask slot: ignored by the loss (PyTorch's cross-entropy default).
IGNORE_INDEX = -100
MASK_REPLACEMENT_PROBABILITY = 0.8
RANDOM_REPLACEMENT_PROBABILITY = 0.1


def masked_token_count(real_tokens: int, mask_tokens: int, mlm_probability: float) -> int:
    """Masked tokens for a sequence of ``real_tokens`` tokens: min(mask_tokens, max(1, round(p x n)))."""
    return min(mask_tokens, max(1, math.floor(mlm_probability * real_tokens + 0.5)))


def packed_mask_slots(
    sequence_length: int, max_sequences_per_pack: int, mask_tokens: int, mlm_probability: float
) -> int:
    """Mask slots per packed row that no row can overflow.

    A row contains at most P sequences with n_1 + ... + n_k <= S tokens. Each sequence's
    count is at most mask_tokens, and at most p x n_i + 1 because the rounding adds at
    most a half and the minimum of one at most one. So the row total is at most
    min(P x mask_tokens, ceil(p x S) + P).
    """
    return min(
        max_sequences_per_pack * mask_tokens,
        math.ceil(mlm_probability * sequence_length) + max_sequences_per_pack,
    )


@dataclass(frozen=True)
class MaskingSettings:
    """Everything masking needs to know about the vocabulary and the rules."""

    mask_tokens: int
    mlm_probability: float
    mask_id: int
    # Boolean lookups indexed by token id.
    never_masked: np.ndarray
    starts_word: np.ndarray | None
    replacement_ids: np.ndarray

    @classmethod
    def from_vocab(
        cls,
        vocab: Sequence[str],
        *,
        mask_tokens: int,
        mlm_probability: float,
        special_ids: Sequence[int],
        mask_id: int,
        whole_word_masking: bool,
        subword_prefix: str = "##",
    ) -> "MaskingSettings":
        if not isinstance(mask_tokens, int) or mask_tokens < 1:
            raise ValueError(f"mask_tokens must be a positive integer, got {mask_tokens!r}")
        if not 0.0 < mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must lie in (0, 1], got {mlm_probability}")
        never_masked = np.zeros(len(vocab), dtype=bool)
        never_masked[list(special_ids)] = True
        bracketed = np.fromiter(
            (token.startswith("[") and token.endswith("]") for token in vocab), dtype=bool, count=len(vocab)
        )
        replacement_ids = np.flatnonzero(~(bracketed | never_masked))
        if len(replacement_ids) == 0:
            raise ValueError("the vocabulary has no ordinary tokens to use as random replacements")
        starts_word = None
        if whole_word_masking:
            starts_word = np.fromiter(
                (not token.startswith(subword_prefix) for token in vocab), dtype=bool, count=len(vocab)
            )
        return cls(mask_tokens, mlm_probability, mask_id, never_masked, starts_word, replacement_ids)

    @classmethod
    def for_generated_vocab(
        cls, vocab_size: int, *, mask_tokens: int, mlm_probability: float, special_ids: Sequence[int], mask_id: int
    ) -> "MaskingSettings":
        """Settings for random-token data, where every non-special id is an ordinary token."""
        never_masked = np.zeros(vocab_size, dtype=bool)
        never_masked[list(special_ids)] = True
        return cls(mask_tokens, mlm_probability, mask_id, never_masked, None, np.flatnonzero(~never_masked))


@dataclass
class MaskedSequence:
    """A sequence after masking: the input ids, the masked positions (ascending) and their labels."""

    input_ids: np.ndarray
    positions: np.ndarray
    labels: np.ndarray


def mask_sequence(ids: np.ndarray, settings: MaskingSettings, rng: np.random.Generator) -> MaskedSequence:
    """Mask one unpadded sequence of token ids (int64) with the rules of this module."""
    candidates = np.flatnonzero(~settings.never_masked[ids])
    count = min(masked_token_count(len(ids), settings.mask_tokens, settings.mlm_probability), len(candidates))
    if count == 0:
        empty = np.zeros(0, dtype=np.int64)
        return MaskedSequence(ids.copy(), empty, empty)
    if settings.starts_word is None:
        positions = np.sort(rng.choice(candidates, size=count, replace=False))
    else:
        positions = _choose_whole_words(ids, candidates, count, settings.starts_word, rng)

    labels = ids[positions].astype(np.int64)
    masked = ids.copy()
    draw = rng.random(len(positions))
    masked[positions[draw < MASK_REPLACEMENT_PROBABILITY]] = settings.mask_id
    random_slots = positions[
        (draw >= MASK_REPLACEMENT_PROBABILITY) & (draw < MASK_REPLACEMENT_PROBABILITY + RANDOM_REPLACEMENT_PROBABILITY)
    ]
    if len(random_slots):
        masked[random_slots] = settings.replacement_ids[rng.integers(len(settings.replacement_ids), size=len(random_slots))]
    return MaskedSequence(masked, positions.astype(np.int64), labels)


def _choose_whole_words(
    ids: np.ndarray, candidates: np.ndarray, count: int, starts_word: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    # A word starts at a non-"##" token or wherever the maskable tokens are not contiguous.
    new_word = starts_word[ids[candidates]]
    new_word[0] = True
    new_word[1:] |= np.diff(candidates) != 1
    bounds = np.append(np.flatnonzero(new_word), len(candidates))
    word_lengths = np.diff(bounds)
    chosen: list[int] = []
    total = 0
    for word in rng.permutation(len(word_lengths)):
        length = int(word_lengths[word])
        if total + length <= count:
            chosen.append(int(word))
            total += length
            if total == count:
                break
    if not chosen:
        shortest = int(np.argmin(word_lengths))
        return candidates[bounds[shortest]:bounds[shortest] + count]
    return np.sort(np.concatenate([candidates[bounds[word]:bounds[word + 1]] for word in chosen]))
