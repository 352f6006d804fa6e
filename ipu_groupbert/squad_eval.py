"""SQuAD post-processing (logits to answer texts) and evaluation (exact match and F1).

Post-processing turns per-token start and end logits of every feature (window) back into answer
texts cut from the original context, and writes `predictions.json`, `nbest_predictions.json`
and, for SQuAD v2.0, `null_odds.json`.

The metrics follow the official SQuAD v1.1/v2.0 evaluation scripts: answers are normalised
(lower case; ASCII punctuation removed; the articles a, an and the removed; whitespace
collapsed), exact match compares normalised strings, F1 is over the bag of normalised tokens,
and each question takes its best score over the reference answers. Scores are percentages.

Command line, on a predictions file:
    python -m ipu_groupbert.squad_eval --data-file dev-v2.0.json --prediction-file predictions.json \
        [--null-odds-file null_odds.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import re
import string
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Normalise an answer as the official SQuAD scripts do.

    Lower case, then remove ASCII punctuation, then the whole words a, an and the, then collapse
    whitespace. Non-ASCII punctuation such as curly quotes is kept, as in the official scripts.
    """
    text = text.lower()
    text = "".join(character for character in text if character not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, reference: str) -> int:
    """Return 1 when the normalised prediction equals the normalised reference, else 0."""
    return int(normalize_answer(prediction) == normalize_answer(reference))


def f1_score(prediction: str, reference: str) -> float:
    """Return the F1 (0 to 1) of the normalised tokens of a prediction against one reference.

    When either side normalises to no tokens, F1 is 1 if both do and 0 otherwise (the SQuAD v2.0
    rule, which scores an empty prediction for an unanswerable question as correct).
    """
    prediction_tokens = normalize_answer(prediction).split()
    reference_tokens = normalize_answer(reference).split()
    if not prediction_tokens or not reference_tokens:
        return float(prediction_tokens == reference_tokens)
    common = collections.Counter(prediction_tokens) & collections.Counter(reference_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


@dataclass
class Reference:
    """The reference answers of one question; `answers` is [""] for an unanswerable question."""

    answers: list[str]
    has_answer: bool


def _references_from_answer_lists(answer_lists: Iterable[tuple[str, Sequence[str]]]) -> dict[str, Reference]:
    references = {}
    for qid, texts in answer_lists:
        # As in the official v2.0 script: answers that normalise to nothing do not count.
        scorable = [text for text in texts if normalize_answer(text)]
        references[qid] = Reference(answers=scorable or [""], has_answer=bool(texts))
    return references


def _answer_text(answer: Any) -> str:
    """Return an answer's text, or "" for a malformed answer, which scoring then drops like any
    answer that normalises to nothing."""
    text = answer.get("text") if isinstance(answer, dict) else None
    return text if isinstance(text, str) else ""


def load_references(dataset: str | Path | Sequence[Any]) -> tuple[dict[str, Reference], bool]:
    """Read the reference answers per question id.

    `dataset` is a SQuAD JSON file or a sequence of `SquadExample`s (anything with `qas_id`,
    `answers` and `is_impossible`). Returns the references and whether the data is SQuAD v2.0
    (its version field is 2.x, or a question has no answer).
    """
    if isinstance(dataset, (str, Path)):
        path = Path(dataset)
        if not path.is_file():
            raise FileNotFoundError(f"SQuAD data file {path} not found; pass the JSON file the predictions were made for")
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise ValueError(f"{path} is not a SQuAD file: expected a JSON object with a 'data' list of articles")
        answer_lists = [
            (str(qa.get("id")), [_answer_text(answer) for answer in qa.get("answers") or []])
            for article in data["data"]
            for paragraph in article.get("paragraphs", [])
            for qa in paragraph.get("qas", [])
        ]
        declared_v2 = str(data.get("version", "")).lstrip("v").startswith("2")
    else:
        answer_lists = [
            (str(example.qas_id), [] if example.is_impossible else [_answer_text(answer) for answer in example.answers])
            for example in dataset
        ]
        declared_v2 = any(example.is_impossible for example in dataset)
    references = _references_from_answer_lists(answer_lists)
    is_v2 = declared_v2 or any(not reference.has_answer for reference in references.values())
    return references, is_v2


def _read_json_mapping(value: str | Path | Mapping[str, Any], description: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"{description} file {path} not found")
    with path.open(encoding="utf-8") as handle:
        loaded = json.load(handle)
    if not isinstance(loaded, dict):
        raise ValueError(f"{description} file {path} must contain a JSON object mapping question ids to values")
    return loaded


def find_best_threshold(
    raw_scores: Mapping[str, float],
    predictions: Mapping[str, str],
    null_odds: Mapping[str, float],
    references: Mapping[str, Reference],
) -> tuple[float, float]:
    """Find the null-odds threshold that maximises a score; return (score in %, threshold).

    At threshold t a question is answered with the empty string when its null odds exceed t, else
    with its prediction. Starting with every question answered empty, thresholds are raised
    through the sorted null odds; questions with equal odds switch together. `raw_scores` are the
    0-to-1 scores of the predictions as given. Questions without a prediction or null odds score 0
    at every threshold. When answering every question empty is best, the threshold returned lies
    1.0 below the smallest null odds.
    """
    if not references:
        raise ValueError("no questions to evaluate")
    usable = [qid for qid in references if qid in predictions and qid in null_odds]
    score = sum(1.0 for qid in usable if not references[qid].has_answer)
    best_score = score
    best_threshold = min((float(null_odds[qid]) for qid in usable), default=0.0) - 1.0

    by_odds = sorted(usable, key=lambda qid: float(null_odds[qid]))
    index = 0
    while index < len(by_odds):
        threshold = float(null_odds[by_odds[index]])
        while index < len(by_odds) and float(null_odds[by_odds[index]]) == threshold:
            qid = by_odds[index]
            # Switching from the empty answer to the prediction: gain its score, and an
            # unanswerable question loses the point the empty answer had.
            score += raw_scores[qid] - (0.0 if references[qid].has_answer else 1.0)
            index += 1
        if score > best_score:
            best_score, best_threshold = score, threshold
    return 100.0 * best_score / len(references), best_threshold


def evaluate_predictions(
    dataset_json_path_or_examples: str | Path | Sequence[Any],
    predictions: str | Path | Mapping[str, str],
    *,
    null_odds: str | Path | Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Score predictions against the reference answers.

    `predictions` maps question ids to answer texts (or is the path of `predictions.json`). The
    predictions are scored as given. A question without a prediction scores 0 and is counted in
    `missing_predictions`; predictions for unknown ids are counted in `unexpected_predictions`.

    Returns `exact_match`, `f1` (percentages), `total`, and for SQuAD v2.0 the official split
    keys `HasAns_exact`, `HasAns_f1`, `HasAns_total`, `NoAns_exact`, `NoAns_f1`, `NoAns_total`;
    with `null_odds` (question id to null score minus best answer score) also `best_exact`,
    `best_exact_thresh`, `best_f1`, `best_f1_thresh`.
    """
    references, is_v2 = load_references(dataset_json_path_or_examples)
    if not references:
        raise ValueError("the SQuAD data contains no questions to evaluate")
    predictions = {str(qid): text for qid, text in _read_json_mapping(predictions, "predictions").items()}
    bad_types = [qid for qid, text in predictions.items() if not isinstance(text, str)]
    if bad_types:
        raise ValueError(f"predictions must map question ids to answer strings; {len(bad_types)} do not, e.g. {bad_types[0]}")

    missing = [qid for qid in references if qid not in predictions]
    unexpected = [qid for qid in predictions if qid not in references]
    if missing:
        logger.warning(
            "%d of %d questions have no prediction and score 0 (e.g. %s)", len(missing), len(references), ", ".join(missing[:5])
        )
    if unexpected:
        logger.warning(
            "%d predictions are for question ids not in the data and are ignored (e.g. %s)",
            len(unexpected),
            ", ".join(unexpected[:5]),
        )

    exact_scores: dict[str, float] = {}
    f1_scores: dict[str, float] = {}
    for qid, reference in references.items():
        if qid not in predictions:
            exact_scores[qid] = f1_scores[qid] = 0.0
            continue
        prediction = predictions[qid]
        exact_scores[qid] = float(max(exact_match_score(prediction, answer) for answer in reference.answers))
        f1_scores[qid] = max(f1_score(prediction, answer) for answer in reference.answers)

    def percent(scores: Mapping[str, float], qids: Sequence[str]) -> float:
        return 100.0 * sum(scores[qid] for qid in qids) / len(qids)

    all_qids = list(references)
    result: dict[str, Any] = {
        "exact_match": percent(exact_scores, all_qids),
        "f1": percent(f1_scores, all_qids),
        "total": len(all_qids),
        "missing_predictions": len(missing),
        "unexpected_predictions": len(unexpected),
    }
    if is_v2:
        for name, has_answer in (("HasAns", True), ("NoAns", False)):
            qids = [qid for qid in all_qids if references[qid].has_answer == has_answer]
            if qids:
                result[f"{name}_exact"] = percent(exact_scores, qids)
                result[f"{name}_f1"] = percent(f1_scores, qids)
                result[f"{name}_total"] = len(qids)
    if null_odds is not None:
        odds = {str(qid): float(value) for qid, value in _read_json_mapping(null_odds, "null odds").items()}
        without_odds = [qid for qid in all_qids if qid in predictions and qid not in odds]
        if without_odds:
            logger.warning(
                "%d questions with a prediction have no null odds; the threshold search scores them 0 (e.g. %s)",
                len(without_odds),
                ", ".join(without_odds[:5]),
            )
        result["best_exact"], result["best_exact_thresh"] = find_best_threshold(exact_scores, predictions, odds, references)
        result["best_f1"], result["best_f1_thresh"] = find_best_threshold(f1_scores, predictions, odds, references)
    return result


# ---------------------------------------------------------------------------------------------
# Post-processing
# ---------------------------------------------------------------------------------------------


def _logits_as_array(logits: Any, name: str, num_features: int, sequence_length: int) -> np.ndarray:
    if hasattr(logits, "detach"):  # a torch tensor, possibly half precision or on an accelerator
        logits = logits.detach().float().cpu().numpy()
    array = np.asarray(logits, dtype=np.float64)
    if array.shape != (num_features, sequence_length):
        raise ValueError(
            f"{name} has shape {tuple(array.shape)}, expected ({num_features}, {sequence_length}): "
            "one row of logits per feature, one column per token"
        )
    if not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0, 0])
        raise ValueError(f"{name} contains NaN or infinite values (first in feature {row}); the model output is invalid")
    return array


def _write_json_atomically(path: Path, value: Any) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".partial")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(value, stream, indent=2, ensure_ascii=False)
        stream.write("\n")
    os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp creates files readable by the owner only
    os.replace(temporary, path)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _feature_candidates(
    feature: Any,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    n_best_size: int,
    max_answer_length: int,
) -> list[tuple[float, float, float, int, int]]:
    """Return (score, start logit, end logit, start char, end char) for valid spans of one feature.

    A span is valid when both ends are context tokens (not [CLS], question, [SEP] or padding),
    it does not run backwards, it is at most `max_answer_length` tokens long, and its start
    token has its maximum context in this window.
    """
    start_indexes = np.argsort(start_logits)[::-1][:n_best_size]
    end_indexes = np.argsort(end_logits)[::-1][:n_best_size]
    offsets = np.asarray(feature.offset_mapping)
    max_context = np.asarray(feature.token_is_max_context, dtype=bool)

    starts = start_indexes[:, None]
    ends = end_indexes[None, :]
    valid = (
        (offsets[start_indexes, 0] >= 0)[:, None]
        & (offsets[end_indexes, 0] >= 0)[None, :]
        & max_context[start_indexes][:, None]
        & (ends >= starts)
        & (ends - starts + 1 <= max_answer_length)
    )
    candidates = []
    for row, column in zip(*np.nonzero(valid)):
        start, end = int(start_indexes[row]), int(end_indexes[column])
        candidates.append(
            (
                float(start_logits[start] + end_logits[end]),
                float(start_logits[start]),
                float(end_logits[end]),
                int(offsets[start, 0]),
                int(offsets[end, 1]),
            )
        )
    return candidates


def _softmax(scores: Sequence[float]) -> list[float]:
    if not scores:
        return []
    top = max(scores)
    exponentials = [math.exp(score - top) for score in scores]
    total = sum(exponentials)
    return [value / total for value in exponentials]


def postprocess_predictions(
    examples: Sequence[Any],
    features: Sequence[Any],
    start_logits: Any,
    end_logits: Any,
    *,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
    output_dir: str | Path | None = None,
    feature_indices: Sequence[int] | None = None,
) -> dict[str, str]:
    """Turn start and end logits into one answer text per question.

    `start_logits`/`end_logits` are [F, S] (numpy, torch or nested lists): row i belongs to
    `features[i]`, or to `features[feature_indices[i]]` when `feature_indices` (the dataset's
    `feature_index` values, in the order the logits were produced) is given. For every example
    the best `n_best_size` start and end tokens of each of its features are paired (see
    `_feature_candidates` for the rules); an answer is the context substring from the start
    token's first character to the end token's last. For SQuAD v2.0 the null answer scores the
    [CLS] logits of the feature where they are lowest, and the question is answered empty when
    null score - best answer score > `null_score_diff_threshold`.

    Writes `predictions.json`, `nbest_predictions.json` and, for v2.0, `null_odds.json` (those
    score differences; Infinity for a question without any valid span) into `output_dir` when it
    is given. Returns {question id: answer text}.
    """
    if n_best_size <= 0 or max_answer_length <= 0:
        raise ValueError(f"n_best_size ({n_best_size}) and max_answer_length ({max_answer_length}) must be positive")
    if not features:
        raise ValueError("no SQuAD features to post-process")
    sequence_length = len(features[0].input_ids)
    start_array = _logits_as_array(start_logits, "start_logits", len(features), sequence_length)
    end_array = _logits_as_array(end_logits, "end_logits", len(features), sequence_length)
    if feature_indices is not None:
        order = np.asarray([int(index) for index in feature_indices], dtype=np.int64)
        if sorted(order.tolist()) != list(range(len(features))):
            raise ValueError(
                f"feature_indices must list every feature index 0..{len(features) - 1} exactly once; "
                f"got {len(order)} values with {len(set(order.tolist()))} distinct"
            )
        start_array[order] = start_array.copy()
        end_array[order] = end_array.copy()

    features_per_example: dict[int, list[int]] = collections.defaultdict(list)
    for feature_position, feature in enumerate(features):
        example_index = feature.example_index
        if not 0 <= example_index < len(examples) or examples[example_index].qas_id != feature.example_id:
            raise ValueError(
                f"feature {feature_position} (question {feature.example_id}, example_index {example_index}) does not "
                "match the examples given; pass the examples the features were made from, in the same order"
            )
        features_per_example[example_index].append(feature_position)

    predictions: dict[str, str] = {}
    nbest_predictions: dict[str, list[dict[str, Any]]] = {}
    null_odds: dict[str, float] = {}
    without_span: list[str] = []
    for example_index, example in enumerate(examples):
        feature_positions = features_per_example.get(example_index)
        if not feature_positions:
            continue
        candidates = []
        null_score, null_start, null_end = math.inf, 0.0, 0.0
        for position in feature_positions:
            feature_start, feature_end = start_array[position], end_array[position]
            candidates += _feature_candidates(
                features[position],
                feature_start,
                feature_end,
                n_best_size=n_best_size,
                max_answer_length=max_answer_length,
            )
            if feature_start[0] + feature_end[0] < null_score:
                null_score = float(feature_start[0] + feature_end[0])
                null_start, null_end = float(feature_start[0]), float(feature_end[0])

        # Highest scores first; of spans with the same text, keep the best one.
        candidates.sort(key=lambda candidate: candidate[0], reverse=True)
        nbest: list[dict[str, Any]] = []
        seen_texts: set[str] = set()
        for score, start_logit, end_logit, start_char, end_char in candidates:
            text = example.context[start_char:end_char]
            if text in seen_texts:
                continue
            seen_texts.add(text)
            nbest.append({"text": text, "score": score, "start_logit": start_logit, "end_logit": end_logit, "offsets": [start_char, end_char]})
            if len(nbest) == n_best_size:
                break

        best_answer = nbest[0] if nbest else None
        if best_answer is None:
            without_span.append(example.qas_id)
        if version_2_with_negative:
            null_entry = {"text": "", "score": null_score, "start_logit": null_start, "end_logit": null_end, "offsets": None}
            nbest = sorted([*nbest, null_entry], key=lambda entry: entry["score"], reverse=True)[:n_best_size]
            score_difference = null_score - best_answer["score"] if best_answer else math.inf
            null_odds[example.qas_id] = score_difference
            answer = "" if score_difference > null_score_diff_threshold else best_answer["text"]
        else:
            answer = best_answer["text"] if best_answer else ""
            if not nbest:
                nbest = [{"text": "", "score": 0.0, "start_logit": 0.0, "end_logit": 0.0, "offsets": None}]

        for entry, probability in zip(nbest, _softmax([entry["score"] for entry in nbest])):
            entry["probability"] = probability
            del entry["score"]
        predictions[example.qas_id] = answer
        nbest_predictions[example.qas_id] = nbest

    if without_span:
        logger.warning(
            "%d questions have no valid answer span in any window; they are answered empty (e.g. %s)",
            len(without_span),
            ", ".join(without_span[:5]),
        )
    missing = len(examples) - len(predictions)
    if missing:
        logger.warning("%d examples have no features (skipped in preprocessing) and no prediction", missing)

    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomically(output_dir / "predictions.json", predictions)
        _write_json_atomically(output_dir / "nbest_predictions.json", nbest_predictions)
        if version_2_with_negative:
            _write_json_atomically(output_dir / "null_odds.json", null_odds)
        logger.info("wrote %d predictions to %s", len(predictions), output_dir)
    return predictions


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ipu_groupbert.squad_eval",
        description="Score SQuAD v1.1/v2.0 predictions (exact match and F1, in percent) and print the result as JSON.",
    )
    parser.add_argument("--data-file", required=True, help="SQuAD JSON file with the reference answers")
    parser.add_argument("--prediction-file", required=True, help="predictions.json: question id to answer text")
    parser.add_argument("--null-odds-file", default=None, help="null_odds.json (SQuAD v2.0): enables the best-threshold search")
    parser.add_argument("--output-file", default=None, help="also write the result to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = evaluate_predictions(args.data_file, args.prediction_file, null_odds=args.null_odds_file)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output_file:
        _write_json_atomically(Path(args.output_file), result)
    return result


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
