"""SQuAD v1.1 / v2.0 question answering data: JSON to model-ready features.

Reads SQuAD JSON files (or a Hugging Face dataset of the same content), tokenises questions and
contexts with a fast tokenizer, and cuts each context into overlapping windows of
`max_seq_length` tokens laid out as `[CLS] question [SEP] context window [SEP] [PAD]...`.

Window rule: `doc_stride` is the step, in context tokens, between the starts of consecutive
windows (the definition of the original BERT code, not the overlap). When `doc_stride` is larger
than the room a window has for context, the step is capped to that room, so consecutive windows
touch and every context token lands in at least one window. Each capped example is counted in
the skip report.

Nothing is dropped silently: invalid examples are skipped and counted per reason in a
`SkipReport`, which is logged as a warning with its totals.

Run `python -m pipelines.squad --help` to convert a file from the command line.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Reasons an example is skipped (key: description). Keys are stable; reports and tests use them.
SKIP_REASONS = {
    "empty_context": "the context is empty or only whitespace",
    "empty_question": "the question is empty or only whitespace",
    "missing_id": "the question has no id",
    "duplicate_id": "another question earlier in the input has the same id",
    "missing_answer": "a training question that is answerable has no answer",
    "empty_answer": "the answer is missing, or its text is empty or only whitespace",
    "answer_start_outside_context": "answer_start is missing, not an integer, or not an offset inside the context",
    "answer_text_not_at_offset": "the answer text is not found in the context at answer_start",
    "impossible_with_answers": "is_impossible is true but the question lists answers",
    "context_has_no_tokens": "the tokenizer produces no token for the context",
    "answer_has_no_tokens": "no context token overlaps the answer characters",
}

# Adjustments made to kept examples (key: description); counted and logged like skips.
NOTE_REASONS = {
    "question_truncated": "the question was longer than max_query_length tokens and was truncated",
    "doc_stride_capped": (
        "doc_stride was larger than the room for context in a window, so windows were stepped "
        "by that room instead and no context token was skipped"
    ),
    "invalid_reference_answer": (
        "a reference answer has an invalid offset or text; the question is kept for prediction "
        "and the answer text is still used for evaluation"
    ),
}

_MAX_IDS_PER_REASON = 5


@dataclass
class SkipReport:
    """Counts of the examples a stage skipped or adjusted, per reason, with a few example ids."""

    stage: str
    source: str
    total: int = 0
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    example_ids: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def kept(self) -> int:
        return self.total - self.num_skipped

    def skip(self, reason: str, example_id: str) -> None:
        if reason not in SKIP_REASONS:
            raise KeyError(f"unknown skip reason {reason!r}; add it to SKIP_REASONS")
        self.skipped[reason] += 1
        self._remember(reason, example_id)

    def note(self, reason: str, example_id: str) -> None:
        if reason not in NOTE_REASONS:
            raise KeyError(f"unknown note reason {reason!r}; add it to NOTE_REASONS")
        self.notes[reason] += 1
        self._remember(reason, example_id)

    def _remember(self, reason: str, example_id: str) -> None:
        ids = self.example_ids.setdefault(reason, [])
        if len(ids) < _MAX_IDS_PER_REASON:
            ids.append(str(example_id))

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "source": self.source,
            "total": self.total,
            "kept": self.kept,
            "skipped": dict(self.skipped),
            "notes": dict(self.notes),
            "example_ids": {reason: list(ids) for reason, ids in self.example_ids.items()},
        }

    def summary(self) -> str:
        lines = [
            f"SQuAD {self.stage} ({self.source}): {self.total} examples, {self.kept} kept, "
            f"{self.num_skipped} skipped, {sum(self.notes.values())} adjusted"
        ]
        for reason, count in sorted(self.skipped.items()):
            ids = ", ".join(self.example_ids.get(reason, []))
            lines.append(f"  skipped {count}: {SKIP_REASONS[reason]} (ids: {ids})")
        for reason, count in sorted(self.notes.items()):
            ids = ", ".join(self.example_ids.get(reason, []))
            lines.append(f"  adjusted {count}: {NOTE_REASONS[reason]} (ids: {ids})")
        return "\n".join(lines)

    def log(self) -> None:
        """Log the summary: a warning when anything was skipped or adjusted, else an info line."""
        level = logging.WARNING if (self.skipped or self.notes) else logging.INFO
        logger.log(level, "%s", self.summary())


# ---------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------


@dataclass
class SquadExample:
    """One question about one context.

    `answers` keeps every reference answer as given (`{"text", "answer_start"}`), for evaluation.
    `answer_start_char`/`answer_end_char` are the character span `[start, end)` of the answer used
    for training, with leading and trailing whitespace removed; both are None when the question has
    no usable answer (an unanswerable v2.0 question, or an unlabelled prediction input).
    """

    qas_id: str
    question: str
    context: str
    answers: list[dict[str, Any]]
    is_impossible: bool = False
    title: str = ""
    answer_start_char: int | None = None
    answer_end_char: int | None = None

    @property
    def answer_text(self) -> str:
        if self.answer_start_char is None or self.answer_end_char is None:
            return ""
        return self.context[self.answer_start_char : self.answer_end_char]


def _check_answer(context: str, answer: Any) -> tuple[str | None, tuple[int, int] | None]:
    """Validate one `{"text", "answer_start"}` answer against its context.

    Returns (skip reason, None) when invalid, else (None, whitespace-stripped `[start, end)` span).
    """
    if not isinstance(answer, dict):
        return "empty_answer", None
    text = answer.get("text")
    start = answer.get("answer_start")
    if not isinstance(text, str) or not text.strip():
        return "empty_answer", None
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < len(context):
        return "answer_start_outside_context", None
    if context[start : start + len(text)] != text:
        return "answer_text_not_at_offset", None
    stripped_start = start + (len(text) - len(text.lstrip()))
    stripped_end = start + len(text.rstrip())
    return None, (stripped_start, stripped_end)


def _examples_from_paragraphs(
    articles: Iterable[tuple[str, str, list[dict[str, Any]]]],
    *,
    is_training: bool,
    version_2_with_negative: bool,
    source: str,
) -> tuple[list[SquadExample], SkipReport]:
    """Build examples from (title, context, qas) triples in the SQuAD JSON layout."""
    report = SkipReport(stage="reading", source=source)
    examples: list[SquadExample] = []
    seen_ids: set[str] = set()
    unanswerable_in_v1: list[str] = []

    for title, context, qas in articles:
        for qa in qas:
            report.total += 1
            qas_id = qa.get("id")
            if qas_id is None or str(qas_id).strip() == "":
                report.skip("missing_id", f"<question {report.total} of {source}>")
                continue
            qas_id = str(qas_id)
            if qas_id in seen_ids:
                report.skip("duplicate_id", qas_id)
                continue
            seen_ids.add(qas_id)

            question = qa.get("question")
            if not isinstance(context, str) or not context.strip():
                report.skip("empty_context", qas_id)
                continue
            if not isinstance(question, str) or not question.strip():
                report.skip("empty_question", qas_id)
                continue

            answers = list(qa.get("answers") or [])
            # Hugging Face's squad_v2 has no is_impossible field: no answers means unanswerable.
            is_impossible = qa.get("is_impossible", version_2_with_negative and not answers)
            if isinstance(is_impossible, str):
                is_impossible = is_impossible.strip().lower() == "true"
            is_impossible = bool(is_impossible)
            if is_impossible and not version_2_with_negative:
                unanswerable_in_v1.append(qas_id)
                continue
            if is_impossible and answers:
                report.skip("impossible_with_answers", qas_id)
                continue

            span = None
            if is_training and not is_impossible:
                # Training uses the first answer, as the original BERT code does.
                if not answers:
                    report.skip("missing_answer", qas_id)
                    continue
                reason, span = _check_answer(context, answers[0])
                if reason is not None:
                    report.skip(reason, qas_id)
                    continue
            elif answers:
                # Prediction does not need the offsets; an invalid one is noted, not fatal.
                checks = [_check_answer(context, answer) for answer in answers]
                if any(reason is not None for reason, _ in checks):
                    report.note("invalid_reference_answer", qas_id)
                span = next((span for reason, span in checks if reason is None), None)

            examples.append(
                SquadExample(
                    qas_id=qas_id,
                    question=question,
                    context=context,
                    answers=answers,
                    is_impossible=is_impossible,
                    title=title,
                    answer_start_char=None if span is None else span[0],
                    answer_end_char=None if span is None else span[1],
                )
            )

    if unanswerable_in_v1:
        raise ValueError(
            f"{source} contains {len(unanswerable_in_v1)} unanswerable questions (is_impossible: true, "
            f"for example {unanswerable_in_v1[0]}), which SQuAD v1.1 does not have; "
            "set squad.version_2_with_negative: true to read SQuAD v2.0 data"
        )
    report.log()
    return examples, report


def _paragraphs_from_json(data: Any, source: str) -> Iterable[tuple[str, str, list[dict[str, Any]]]]:
    """Yield (title, context, qas) from the official SQuAD JSON layout, checking its structure."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(
            f"{source} is not a SQuAD file: expected a JSON object with a 'data' list of articles "
            "(the official SQuAD v1.1/v2.0 layout)"
        )
    for article_index, article in enumerate(data["data"]):
        where = f"{source}: data[{article_index}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise ValueError(f"{where} has no 'paragraphs' list; each article needs 'paragraphs'")
        title = str(article.get("title", ""))
        for paragraph_index, paragraph in enumerate(article["paragraphs"]):
            pwhere = f"{where}.paragraphs[{paragraph_index}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise ValueError(f"{pwhere} has no 'qas' list; each paragraph needs 'context' and 'qas'")
            qas = [qa for qa in paragraph["qas"] if isinstance(qa, dict)]
            if len(qas) != len(paragraph["qas"]):
                raise ValueError(f"{pwhere}.qas contains entries that are not JSON objects")
            yield title, paragraph.get("context", ""), qas


def _paragraphs_from_records(records: Iterable[Any], source: str) -> Iterable[tuple[str, str, list[dict[str, Any]]]]:
    """Yield one (title, context, [qa]) per flat record, as in Hugging Face's `squad`/`squad_v2`.

    A record has `id`, `title`, `context`, `question` and `answers`, where `answers` is either
    `{"text": [...], "answer_start": [...]}` (Hugging Face) or a list of `{"text", "answer_start"}`.
    """
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{source}: record {index} is a {type(record).__name__}, expected a dict")
        answers = record.get("answers") or []
        if isinstance(answers, dict):
            texts = list(answers.get("text") or [])
            starts = list(answers.get("answer_start") or [])
            if len(texts) != len(starts):
                raise ValueError(
                    f"{source}: record {index} (id {record.get('id')}) has {len(texts)} answer texts "
                    f"but {len(starts)} answer_start values"
                )
            answers = [{"text": text, "answer_start": start} for text, start in zip(texts, starts)]
        qa = {"id": record.get("id"), "question": record.get("question"), "answers": answers}
        if "is_impossible" in record:
            qa["is_impossible"] = record["is_impossible"]
        yield str(record.get("title", "")), record.get("context", ""), [qa]


def read_squad_examples(
    path_or_dataset_name: str | Path | Iterable[dict[str, Any]],
    *,
    is_training: bool,
    version_2_with_negative: bool,
    split: str | None = None,
) -> tuple[list[SquadExample], SkipReport]:
    """Read SQuAD questions into examples, skipping and counting invalid ones.

    `path_or_dataset_name` is a SQuAD JSON file, a Hugging Face dataset name (needs the `datasets`
    package and, unless cached, a network connection), or an already loaded iterable of flat
    records in the Hugging Face `squad` layout. `split` picks the dataset split for a name
    (default `train` when training, else `validation`).

    Training examples carry the first answer's character span; an unanswerable v2.0 question trains
    towards `[CLS]`. Raises ValueError for a file that is not in the SQuAD layout, or for
    unanswerable questions when `version_2_with_negative` is false.
    """
    if not isinstance(path_or_dataset_name, (str, Path)):
        records = path_or_dataset_name
        source = f"<{type(records).__name__} of records>"
        return _examples_from_paragraphs(
            _paragraphs_from_records(records, source),
            is_training=is_training,
            version_2_with_negative=version_2_with_negative,
            source=source,
        )

    path = Path(path_or_dataset_name)
    if path.is_file():
        try:
            with path.open(encoding="utf-8") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); expected a SQuAD v1.1/v2.0 JSON file") from error
        return _examples_from_paragraphs(
            _paragraphs_from_json(data, str(path)),
            is_training=is_training,
            version_2_with_negative=version_2_with_negative,
            source=str(path),
        )

    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; pass the path of a SQuAD v1.1/v2.0 JSON file in it")
    name = str(path_or_dataset_name)
    # A Hugging Face name looks like `squad` or `owner/squad`; anything path-like must exist.
    if path.suffix or name.startswith(("/", ".", "~")) or isinstance(path_or_dataset_name, Path):
        raise FileNotFoundError(f"SQuAD file {name} not found; pass the path of a SQuAD v1.1/v2.0 JSON file")
    split = split or ("train" if is_training else "validation")
    records = _load_hub_dataset(name, split)
    return _examples_from_paragraphs(
        _paragraphs_from_records(records, f"{name}[{split}]"),
        is_training=is_training,
        version_2_with_negative=version_2_with_negative,
        source=f"{name}[{split}]",
    )


def _load_hub_dataset(name: str, split: str) -> Iterable[dict[str, Any]]:
    # NOTE: never run in the test suite, which has neither `datasets` nor a network; the record
    # conversion this feeds is tested with records in the `squad_v2` layout.
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            f"{name!r} is not a file, and loading it as a Hugging Face dataset needs the `datasets` "
            "package (pip install datasets); or pass the path of a SQuAD JSON file"
        ) from error
    logger.info("loading Hugging Face dataset %s, split %s", name, split)
    try:
        return datasets.load_dataset(name, split=split)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"could not load Hugging Face dataset {name!r}, split {split!r}: {error}. "
            "Without a network connection, pass the path of a SQuAD JSON file instead."
        ) from error


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

_SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


def _read_vocab(path: Path) -> dict[str, int]:
    vocab: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            token = line.rstrip("\r\n")
            if token in vocab:
                raise ValueError(f"{path}:{line_number}: token {token!r} repeats line {vocab[token] + 1}")
            vocab[token] = line_number - 1
    if not vocab:
        raise ValueError(f"vocabulary file {path} is empty; expected one WordPiece token per line")
    missing = [token for token in ("[CLS]", "[SEP]", "[PAD]", "[UNK]") if token not in vocab]
    if missing:
        raise ValueError(f"vocabulary file {path} lacks the special tokens {missing}; a BERT WordPiece vocabulary has them")
    return vocab


def vocab_is_uncased(tokens: Iterable[str]) -> bool:
    """Tell whether a WordPiece vocabulary is uncased: no ordinary token changes under lower()."""
    return not any(token.lower() != token for token in tokens if not (token.startswith("[") and token.endswith("]")))


def load_tokenizer(path: str | Path):
    """Load a fast (Rust `tokenizers`) BERT tokenizer from local files, never from the network.

    `path` is a WordPiece `vocab.txt`, a `tokenizer.json`, or a folder holding either (a checkpoint
    or a saved tokenizer). For a vocabulary file, lower-casing (with accent stripping, as BERT
    does) follows the vocabulary: on when the vocabulary is uncased. Returns a `transformers`
    fast tokenizer with `[CLS]`, `[SEP]` and `[PAD]` defined.
    """
    from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

    path = Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        elif (path / "vocab.txt").is_file():
            return load_tokenizer(path / "vocab.txt")
        else:
            raise FileNotFoundError(
                f"no tokenizer files in {path}: expected tokenizer.json, tokenizer_config.json or vocab.txt in it"
            )
    elif path.is_file() and path.suffix == ".json":
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
    elif path.is_file():
        vocab = _read_vocab(path)
        lower_case = vocab_is_uncased(vocab)
        logger.info("vocabulary %s is %s, so the tokenizer %s", path, *(
            ("uncased", "lower-cases and strips accents") if lower_case else ("cased", "keeps case")
        ))
        tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=lower_case)
    else:
        raise FileNotFoundError(f"tokenizer {path} not found; pass a vocab.txt, a tokenizer.json or a folder with either")

    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer from {path} is not a fast tokenizer; character offsets need the Rust `tokenizers` backend")
    _fill_bert_special_tokens(tokenizer)
    for role in ("cls_token_id", "sep_token_id", "pad_token_id"):
        if getattr(tokenizer, role, None) is None:
            raise ValueError(f"tokenizer from {path} has no {role.removesuffix('_id')}; SQuAD features need [CLS], [SEP] and [PAD]")
    _warn_on_case_mismatch(tokenizer, path)
    return tokenizer


def _fill_bert_special_tokens(tokenizer) -> None:
    """Set BERT's special tokens that a bare `tokenizer.json` leaves undefined but its vocabulary has."""
    vocab = tokenizer.get_vocab()
    for role, token in _SPECIAL_TOKENS.items():
        if getattr(tokenizer, role, None) is None and token in vocab:
            setattr(tokenizer, role, token)


def _warn_on_case_mismatch(tokenizer, path: Path) -> None:
    """Warn when a tokenizer keeps case although its vocabulary is uncased (or the reverse)."""
    try:
        normalizer = json.loads(tokenizer.backend_tokenizer.to_str()).get("normalizer") or {}
    except (AttributeError, ValueError):
        return
    if normalizer.get("type") != "BertNormalizer":
        return
    uncased = vocab_is_uncased(tokenizer.get_vocab())
    if bool(normalizer.get("lowercase")) != uncased:
        logger.warning(
            "tokenizer %s %s but its vocabulary is %s; capitalised words may map to [UNK]. "
            "Check the tokenizer's lower-casing setting.",
            path,
            "lower-cases" if normalizer.get("lowercase") else "keeps case",
            "uncased" if uncased else "cased",
        )


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------


@dataclass
class SquadFeature:
    """One window of one example, padded to `max_seq_length` (S) tokens.

    Token arrays are int64 [S]. `offset_mapping` [S, 2] is each token's `[start, end)` character
    span in the example's context, with -1 for tokens outside the context ([CLS], question,
    [SEP], padding). `token_is_max_context` [S] marks the context tokens whose score counts in
    this window: of the windows holding a token, the one where it has the most context on its
    shorter side. `start_position`/`end_position` index the answer's first and last token, or 0
    ([CLS]) when the example has no answer or the answer is not wholly inside this window, and
    `is_impossible` is then true. `example_index` is the example's position in the list the
    features were made from.
    """

    example_index: int
    example_id: str
    window_index: int
    context_token_start: int
    input_ids: np.ndarray
    token_type_ids: np.ndarray
    attention_mask: np.ndarray
    offset_mapping: np.ndarray
    token_is_max_context: np.ndarray
    start_position: int = 0
    end_position: int = 0
    is_impossible: bool = False

    def char_span(self, position: int) -> tuple[int, int] | None:
        """Return the context character span of the token at `position`, or None outside the context."""
        start, end = self.offset_mapping[position]
        if start < 0:
            return None
        return int(start), int(end)


def plan_windows(num_context_tokens: int, room: int, doc_stride: int) -> list[tuple[int, int]]:
    """Return (first context token, token count) for each window over a context.

    Windows start at 0, `step`, `2 * step`, ... with `step = min(doc_stride, room)`, and the last
    one ends at the last context token, so the windows cover every token.
    """
    if room <= 0:
        raise ValueError(f"no room for context tokens in a window (room {room}); increase max_seq_length")
    if doc_stride <= 0:
        raise ValueError(f"doc_stride must be a positive number of tokens, got {doc_stride}")
    step = min(doc_stride, room)
    windows = []
    start = 0
    while True:
        length = min(room, num_context_tokens - start)
        windows.append((start, length))
        if start + length >= num_context_tokens:
            return windows
        start += step


def max_context_windows(windows: Sequence[tuple[int, int]], num_context_tokens: int) -> np.ndarray:
    """Return, per context token, the index of the window where the token has the most context.

    A token's context in a window is min(tokens left of it, tokens right of it), plus 0.01 times
    the window length to prefer longer windows on ties, the scoring of the original BERT code.
    """
    best_window = np.zeros(num_context_tokens, dtype=np.int64)
    best_score = np.full(num_context_tokens, -np.inf)
    for window_index, (start, length) in enumerate(windows):
        positions = np.arange(start, start + length)
        score = np.minimum(positions - start, start + length - 1 - positions) + 0.01 * length
        better = score > best_score[positions]
        best_score[positions[better]] = score[better]
        best_window[positions[better]] = window_index
    return best_window


def _answer_token_span(offsets: np.ndarray, start_char: int, end_char: int) -> tuple[int, int] | None:
    """Return the first and last context token overlapping characters `[start_char, end_char)`."""
    token_ends = offsets[:, 1]
    token_starts = offsets[:, 0]
    first = bisect.bisect_right(token_ends.tolist(), start_char)
    last = bisect.bisect_left(token_starts.tolist(), end_char) - 1
    if first >= len(offsets) or last < first:
        return None
    return first, last


def convert_examples_to_features(
    examples: Sequence[SquadExample],
    tokenizer,
    *,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int,
    is_training: bool,
    source: str = "examples",
) -> tuple[list[SquadFeature], SkipReport]:
    """Tokenise examples into padded windows of `max_seq_length` tokens.

    Questions longer than `max_query_length` tokens are truncated (and counted). See the module
    docstring for the window rule. Training examples whose answer no context token overlaps are
    skipped and counted; a window that does not wholly hold the answer trains towards [CLS].
    """
    if max_query_length <= 0:
        raise ValueError(f"max_query_length must be positive, got {max_query_length}")
    if max_seq_length <= max_query_length + 3:
        raise ValueError(
            f"max_seq_length {max_seq_length} leaves no room for context after a question of up to "
            f"max_query_length {max_query_length} tokens and 3 special tokens; increase max_seq_length "
            "or decrease max_query_length"
        )
    if doc_stride <= 0:
        raise ValueError(f"doc_stride must be a positive number of tokens, got {doc_stride}")

    report = SkipReport(stage="features", source=source)
    report.total = len(examples)
    features: list[SquadFeature] = []
    if not examples:
        report.log()
        return features, report

    # verbose=False: contexts longer than the model's maximum length are expected here, because
    # they are cut into windows below, so the tokenizer's warning about them would mislead.
    question_encodings = tokenizer(
        [example.question for example in examples], add_special_tokens=False, verbose=False
    )["input_ids"]
    unique_contexts = list(dict.fromkeys(example.context for example in examples))
    context_encodings = tokenizer(unique_contexts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    context_index = {context: index for index, context in enumerate(unique_contexts)}

    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    for example_index, example in enumerate(examples):
        question_ids = question_encodings[example_index]
        if len(question_ids) > max_query_length:
            report.note("question_truncated", example.qas_id)
            question_ids = question_ids[:max_query_length]
        if not question_ids:
            report.skip("empty_question", example.qas_id)
            continue

        encoding_index = context_index[example.context]
        context_ids = context_encodings["input_ids"][encoding_index]
        offsets = np.asarray(context_encodings["offset_mapping"][encoding_index], dtype=np.int64).reshape(-1, 2)
        if not context_ids:
            report.skip("context_has_no_tokens", example.qas_id)
            continue

        answer_span = None
        if example.answer_start_char is not None:
            answer_span = _answer_token_span(offsets, example.answer_start_char, example.answer_end_char)
            if answer_span is None and is_training:
                report.skip("answer_has_no_tokens", example.qas_id)
                continue

        room = max_seq_length - len(question_ids) - 3
        windows = plan_windows(len(context_ids), room, doc_stride)
        if doc_stride > room and len(windows) > 1:
            report.note("doc_stride_capped", example.qas_id)
        best_window = max_context_windows(windows, len(context_ids))

        context_offset = len(question_ids) + 2  # [CLS] question [SEP]
        for window_index, (window_start, window_length) in enumerate(windows):
            window_end = window_start + window_length
            input_ids = np.full(max_seq_length, pad_id, dtype=np.int64)
            token_type_ids = np.zeros(max_seq_length, dtype=np.int64)
            attention_mask = np.zeros(max_seq_length, dtype=np.int64)
            offset_mapping = np.full((max_seq_length, 2), -1, dtype=np.int64)
            token_is_max_context = np.zeros(max_seq_length, dtype=bool)

            sequence = [cls_id, *question_ids, sep_id, *context_ids[window_start:window_end], sep_id]
            input_ids[: len(sequence)] = sequence
            attention_mask[: len(sequence)] = 1
            token_type_ids[context_offset : len(sequence)] = 1
            context_slice = slice(context_offset, context_offset + window_length)
            offset_mapping[context_slice] = offsets[window_start:window_end]
            token_is_max_context[context_slice] = best_window[window_start:window_end] == window_index

            start_position = end_position = 0
            if answer_span is not None and window_start <= answer_span[0] and answer_span[1] < window_end:
                start_position = answer_span[0] - window_start + context_offset
                end_position = answer_span[1] - window_start + context_offset

            features.append(
                SquadFeature(
                    example_index=example_index,
                    example_id=example.qas_id,
                    window_index=window_index,
                    context_token_start=window_start,
                    input_ids=input_ids,
                    token_type_ids=token_type_ids,
                    attention_mask=attention_mask,
                    offset_mapping=offset_mapping,
                    token_is_max_context=token_is_max_context,
                    start_position=start_position,
                    end_position=end_position,
                    is_impossible=start_position == 0,
                )
            )

    report.log()
    logger.info("made %d features from %d examples", len(features), report.kept)
    return features, report


class SquadFeatureDataset(torch.utils.data.Dataset):
    """Features as a map-style dataset of dicts of int64 tensors.

    Every item has `input_ids`, `token_type_ids`, `attention_mask` [S]; training items add
    `start_positions` and `end_positions` (scalars, 0 = [CLS]); prediction items add
    `feature_index` (scalar), the feature's position in the list given here, which maps the
    model's logits back to the feature for post-processing.
    """

    def __init__(self, features: Sequence[SquadFeature], *, is_training: bool):
        if not features:
            raise ValueError("no SQuAD features to serve; every example was skipped (see the logged skip report)")
        self.is_training = is_training
        self.input_ids = torch.from_numpy(np.stack([feature.input_ids for feature in features]))
        self.token_type_ids = torch.from_numpy(np.stack([feature.token_type_ids for feature in features]))
        self.attention_mask = torch.from_numpy(np.stack([feature.attention_mask for feature in features]))
        self.start_positions = torch.tensor([feature.start_position for feature in features], dtype=torch.int64)
        self.end_positions = torch.tensor([feature.end_position for feature in features], dtype=torch.int64)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {
            "input_ids": self.input_ids[index],
            "token_type_ids": self.token_type_ids[index],
            "attention_mask": self.attention_mask[index],
        }
        if self.is_training:
            item["start_positions"] = self.start_positions[index]
            item["end_positions"] = self.end_positions[index]
        else:
            item["feature_index"] = torch.tensor(index, dtype=torch.int64)
        return item


# ---------------------------------------------------------------------------------------------
# Saving features and the command line
# ---------------------------------------------------------------------------------------------


def save_features(path: str | Path, features: Sequence[SquadFeature]) -> None:
    """Write features to a NumPy `.npz` archive, written to a temporary name and then renamed.

    The archive does not store the examples: post-processing needs them from
    `read_squad_examples` on the same input, whose order `example_index` refers to.
    """
    if not features:
        raise ValueError("no SQuAD features to save; every example was skipped (see the logged skip report)")
    path = Path(path)
    arrays = {
        "input_ids": np.stack([feature.input_ids for feature in features]),
        "token_type_ids": np.stack([feature.token_type_ids for feature in features]),
        "attention_mask": np.stack([feature.attention_mask for feature in features]),
        "offset_mapping": np.stack([feature.offset_mapping for feature in features]),
        "token_is_max_context": np.stack([feature.token_is_max_context for feature in features]),
        "start_positions": np.array([feature.start_position for feature in features], dtype=np.int64),
        "end_positions": np.array([feature.end_position for feature in features], dtype=np.int64),
        "example_index": np.array([feature.example_index for feature in features], dtype=np.int64),
        "window_index": np.array([feature.window_index for feature in features], dtype=np.int64),
        "context_token_start": np.array([feature.context_token_start for feature in features], dtype=np.int64),
        "example_id": np.array([feature.example_id for feature in features], dtype=np.str_),
    }
    temporary = path.with_name(path.name + ".partial")
    with temporary.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
    temporary.replace(path)


def load_features(path: str | Path) -> list[SquadFeature]:
    """Read features written by `save_features`."""
    with np.load(Path(path), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return [
        SquadFeature(
            example_index=int(arrays["example_index"][i]),
            example_id=str(arrays["example_id"][i]),
            window_index=int(arrays["window_index"][i]),
            context_token_start=int(arrays["context_token_start"][i]),
            input_ids=arrays["input_ids"][i],
            token_type_ids=arrays["token_type_ids"][i],
            attention_mask=arrays["attention_mask"][i],
            offset_mapping=arrays["offset_mapping"][i],
            token_is_max_context=arrays["token_is_max_context"][i],
            start_position=int(arrays["start_positions"][i]),
            end_position=int(arrays["end_positions"][i]),
            is_impossible=int(arrays["start_positions"][i]) == 0,
        )
        for i in range(len(arrays["input_ids"]))
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.squad",
        description=(
            "Convert a SQuAD v1.1/v2.0 JSON file to model-ready features and print what was "
            "kept, skipped and adjusted as JSON."
        ),
    )
    parser.add_argument("input", help="SQuAD JSON file, or a Hugging Face dataset name (needs `datasets` and a connection)")
    parser.add_argument("--tokenizer", required=True, help="vocab.txt, tokenizer.json, or a checkpoint/tokenizer folder")
    parser.add_argument("--split", default=None, help="dataset split for a Hugging Face name (default: train with --training, else validation)")
    parser.add_argument("--training", action="store_true", help="make training features (answer positions); default: prediction features")
    parser.add_argument("--version-2-with-negative", action="store_true", help="read SQuAD v2.0 data with unanswerable questions")
    parser.add_argument("--max-seq-length", type=int, default=384, help="tokens per feature, special tokens included (default 384)")
    parser.add_argument("--doc-stride", type=int, default=128, help="step between window starts, in context tokens (default 128)")
    parser.add_argument("--max-query-length", type=int, default=64, help="question tokens kept; longer questions are truncated (default 64)")
    parser.add_argument("--output-file", default=None, help="write the features to this .npz file")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    tokenizer = load_tokenizer(args.tokenizer)
    examples, read_report = read_squad_examples(
        args.input,
        is_training=args.training,
        version_2_with_negative=args.version_2_with_negative,
        split=args.split,
    )
    features, feature_report = convert_examples_to_features(
        examples,
        tokenizer,
        max_seq_length=args.max_seq_length,
        doc_stride=args.doc_stride,
        max_query_length=args.max_query_length,
        is_training=args.training,
        source=read_report.source,
    )
    if args.output_file:
        save_features(args.output_file, features)

    result = {
        "examples": len(examples),
        "features": len(features),
        "reading": read_report.to_dict(),
        "features_report": feature_report.to_dict(),
        "output_file": args.output_file,
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return result


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, ImportError) as error:
        sys.exit(f"error: {error}")
