"""Rule-based English sentence splitting for building next-sentence pairs.

A paragraph is split after ``.``, ``!`` or ``?`` (with any closing quotes or brackets)
when whitespace and then an upper-case letter, a digit or an opening quote follow.
A period does not end a sentence after a known abbreviation ("Dr.", "e.g.", "No." before a
number), a single letter ("J. R. R. Tolkien") or a dotted acronym ("U.S."). The rules are tuned for
encyclopaedic English. A missed boundary only makes a segment longer, and the pair
builder copes with segments of any length.
"""

from __future__ import annotations

import re

# Lower-cased, without the final period.
_ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "rev", "gen", "col", "lt", "sgt", "capt",
        "cmdr", "adm", "maj", "gov", "sen", "rep", "pres", "hon", "fr", "mt", "ft", "vs", "etc",
        "e.g", "i.e", "cf", "al", "approx", "ca", "inc", "ltd", "co", "corp", "bros", "vol",
        "vols", "fig", "figs", "pp", "ed", "eds", "op", "cit", "jan", "feb", "mar", "apr", "jun",
        "jul", "aug", "sep", "sept", "oct", "nov", "dec", "dept", "univ", "assn", "ave", "blvd",
        "rd", "sq", "mss", "viz", "ibid",
    }
)
# Abbreviations that are also ordinary words ("the answer is no."): only before a number.
_NUMBER_ABBREVIATIONS = frozenset({"no", "nos", "art", "sec", "ch", "pt"})

_BOUNDARY = re.compile(r"([.!?]+[\"'”’)\]]*)\s+(?=[\"'“‘(\[]?[A-Z0-9\u00c0-\u00de])")
_DOTTED_ACRONYM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")


def _ends_with_abbreviation(text_before_period: str, next_character: str) -> bool:
    words = text_before_period.rsplit(None, 1)
    if not words:
        return False
    word = words[-1].lstrip("\"'“‘([")
    if not word:
        return False
    if len(word) == 1 and word.isalpha():
        return True
    word = word.lower()
    if word in _NUMBER_ABBREVIATIONS:
        return next_character.isdigit()
    return word in _ABBREVIATIONS or _DOTTED_ACRONYM.fullmatch(word) is not None


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences; whitespace-only input gives an empty list."""
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(paragraph):
        punctuation = match.group(1)
        if punctuation.startswith(".") and not punctuation.startswith(".."):
            next_character = paragraph[match.end():match.end() + 1]
            if _ends_with_abbreviation(paragraph[start:match.start(1)], next_character):
                continue
        sentence = paragraph[start:match.end(1)].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences
