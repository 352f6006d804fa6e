"""SQuAD metrics on hand-built cases with known official values, and post-processing of logits."""

import json
import logging

import numpy as np
import pytest
import torch

from ipu_groupbert.squad_eval import (
    evaluate_predictions,
    exact_match_score,
    f1_score,
    find_best_threshold,
    load_references,
    normalize_answer,
    postprocess_predictions,
)
from pipelines.squad import SquadExample, convert_examples_to_features, load_tokenizer, read_squad_examples


# --- normalisation and per-answer scores ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Denver Broncos", "denver broncos"),
        ("Denver,  Colorado!", "denver colorado"),
        ("an apple a day", "apple day"),
        ("another theatre", "another theatre"),  # articles only as whole words
        ("A.D. 1066", "ad 1066"),
        ("“Broncos”", "“broncos”"),  # the official scripts remove ASCII punctuation only
        ("  \tthe\n ", ""),
    ],
)
def test_normalize_answer(text, normalised):
    assert normalize_answer(text) == normalised


@pytest.mark.parametrize(
    ("prediction", "reference", "exact", "f1"),
    [
        ("the Denver Broncos", "Denver Broncos", 1, 1.0),
        ("Broncos", "Denver Broncos", 0, 2 / 3),  # precision 1, recall 1/2
        ("Denver Broncos won", "Broncos", 0, 0.5),  # precision 1/3, recall 1
        ("cat cat", "cat", 0, 2 / 3),  # a repeated token counts once against one reference token
        ("Carolina Panthers", "Denver Broncos", 0, 0.0),
        ("“Broncos”", "Broncos", 0, 0.0),
        ("", "", 1, 1.0),  # an unanswerable question answered empty
        ("Broncos", "", 0, 0.0),
        ("", "Broncos", 0, 0.0),
    ],
)
def test_exact_and_f1_per_answer(prediction, reference, exact, f1):
    assert exact_match_score(prediction, reference) == exact
    assert f1_score(prediction, reference) == pytest.approx(f1)


# --- dataset-level evaluation --------------------------------------------------------------


def write_dataset(tmp_path, questions, version="1.1"):
    """Write a SQuAD file with one paragraph; `questions` maps ids to lists of answer texts."""
    context = "Denver Broncos beat the Carolina Panthers in Santa Clara. Nobody knows the rest."
    qas = []
    for qid, texts in questions.items():
        answers = [{"text": text, "answer_start": context.index(text)} for text in texts]
        qas.append({"id": qid, "question": f"Question {qid}?", "answers": answers, "is_impossible": not texts})
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"version": version, "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}))
    return path


def test_evaluate_v1_best_over_references(tmp_path):
    path = write_dataset(
        tmp_path,
        {
            "q1": ["Denver Broncos", "Broncos beat"],
            "q2": ["Carolina Panthers", "Panthers"],
            "q3": ["Santa Clara"],
        },
    )
    predictions = {"q1": "Broncos", "q2": "the Panthers", "q3": "Clara Santa Clara"}
    result = evaluate_predictions(path, predictions)
    # q1: F1 2/3 against either reference. q2: exact against "Panthers". q3: precision 2/3, recall 1.
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (2 / 3 + 1 + 0.8) / 3)
    assert result["total"] == 3
    assert "HasAns_exact" not in result


def test_evaluate_missing_and_unexpected(tmp_path, caplog):
    path = write_dataset(tmp_path, {"q1": ["Denver Broncos"], "q2": ["Santa Clara"]})
    with caplog.at_level(logging.WARNING):
        result = evaluate_predictions(path, {"q1": "Denver Broncos", "other": "x"})
    assert result["exact_match"] == 50.0
    assert result["missing_predictions"] == 1
    assert result["unexpected_predictions"] == 1
    assert "1 of 2 questions have no prediction" in caplog.text


def test_evaluate_v2_splits_and_threshold(tmp_path):
    path = write_dataset(tmp_path, {"q1": ["Denver Broncos"], "q2": [], "q3": ["Santa Clara"], "q4": []}, version="v2.0")
    predictions = {"q1": "Denver Broncos", "q2": "Carolina Panthers", "q3": "Clara", "q4": ""}
    null_odds = {"q1": -1.0, "q2": 2.0, "q3": 0.5, "q4": 3.0}
    result = evaluate_predictions(path, predictions, null_odds=null_odds)

    assert result["exact_match"] == 50.0  # q1 and q4
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 4)
    assert (result["HasAns_exact"], result["HasAns_total"]) == (50.0, 2)
    assert result["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert (result["NoAns_exact"], result["NoAns_f1"], result["NoAns_total"]) == (50.0, 50.0, 2)
    # Raising the threshold from "all empty" (q2, q4 right: 2/4): q1 at -1 gains 1 (3/4),
    # q3 at 0.5 gains 0 for exact and 2/3 for F1, q2 at 2 loses 1, q4 at 3 changes nothing.
    assert (result["best_exact"], result["best_exact_thresh"]) == (75.0, -1.0)
    assert result["best_f1"] == pytest.approx(100 * (3 + 2 / 3) / 4)
    assert result["best_f1_thresh"] == 0.5


def test_best_threshold_moves_ties_together(tmp_path):
    references, _ = load_references(write_dataset(tmp_path, {"q1": ["Santa Clara"], "q2": []}, version="v2.0"))
    predictions = {"q1": "Santa Clara", "q2": "Denver"}
    scores = {"q1": 1.0, "q2": 0.0}
    # Both switch at threshold 1.0: +1 for q1 and -1 for q2, never better than all empty (1 of 2).
    best, threshold = find_best_threshold(scores, predictions, {"q1": 1.0, "q2": 1.0}, references)
    assert best == 50.0
    assert threshold == 0.0  # below the smallest null odds


def test_evaluate_real_eval_split(shared_data):
    path = shared_data / "squad" / "squad-v1.1-dev-eval-split.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    qas = [qa for article in data["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]

    last_reference = {qa["id"]: qa["answers"][-1]["text"] for qa in qas}
    result = evaluate_predictions(path, last_reference)
    assert (result["exact_match"], result["f1"], result["total"]) == (100.0, 100.0, 1419)

    first_three = qas[:3]
    predictions = {qa["id"]: qa["answers"][0]["text"] for qa in qas}
    for qa in first_three:
        predictions[qa["id"]] = "completely unrelated words"
    result = evaluate_predictions(path, predictions)
    assert result["exact_match"] == pytest.approx(100 * 1416 / 1419)

    examples, _ = read_squad_examples(path, is_training=False, version_2_with_negative=False)
    assert evaluate_predictions(examples, predictions) == result


def test_evaluate_rejects_non_string_answers(tmp_path):
    path = write_dataset(tmp_path, {"q1": ["Santa Clara"]})
    with pytest.raises(ValueError, match="answer strings"):
        evaluate_predictions(path, {"q1": ["Santa Clara"]})


# --- post-processing -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_tokenizer(bert_vocab_file):
    return load_tokenizer(bert_vocab_file)


@pytest.fixture(scope="module")
def ipcc_example(shared_data):
    """First question of the evaluation split: answer 'the United Nations' in the IPCC paragraph."""
    examples, _ = read_squad_examples(
        shared_data / "squad" / "squad-v1.1-dev-eval-split.json", is_training=False, version_2_with_negative=False
    )
    assert examples[0].answer_text == "the United Nations"
    return examples[0]


def one_feature(example, tokenizer, max_seq_length=384):
    features, _ = convert_examples_to_features(
        [example], tokenizer, max_seq_length=max_seq_length, doc_stride=128, max_query_length=8, is_training=False
    )
    return features


def test_index_in_question_or_padding_ignored(ipcc_example, bert_tokenizer, tmp_path):
    features = one_feature(ipcc_example, bert_tokenizer)
    (feature,) = features
    question_position = 3
    padding_position = int(np.nonzero(feature.attention_mask == 0)[0][0]) + 5
    assert feature.char_span(question_position) is None
    assert feature.char_span(padding_position) is None

    start = np.zeros((1, 384))
    end = np.zeros((1, 384))
    start[0, [question_position, padding_position]] = 50.0
    end[0, [question_position + 1, padding_position + 2]] = 50.0
    start[0, feature.start_position] = 10.0
    end[0, feature.end_position] = 10.0

    predictions = postprocess_predictions([ipcc_example], features, start, end, output_dir=tmp_path)
    assert predictions == {ipcc_example.qas_id: "the United Nations"}
    nbest = json.loads((tmp_path / "nbest_predictions.json").read_text())[ipcc_example.qas_id]
    assert len(nbest) == 20
    for entry in nbest:
        begin, finish = entry["offsets"]
        assert ipcc_example.context[begin:finish] == entry["text"]
    assert sum(entry["probability"] for entry in nbest) == pytest.approx(1.0)
    assert len({entry["text"] for entry in nbest}) == len(nbest)
    assert not (tmp_path / "null_odds.json").exists()


def test_span_rules(ipcc_example, bert_tokenizer):
    features = one_feature(ipcc_example, bert_tokenizer)
    (feature,) = features
    first, last = feature.start_position, feature.end_position
    assert last - first == 2  # "the United Nations" is three tokens

    start = np.zeros((1, 384))
    end = np.zeros((1, 384))
    start[0, first] = 10.0
    end[0, last] = 10.0
    end[0, first - 1] = 20.0  # an end before the best start
    start[0, first + 1] = 5.0  # the second best start: "United Nations"

    predictions = postprocess_predictions([ipcc_example], features, start, end, max_answer_length=2, output_dir=None)
    assert predictions[ipcc_example.qas_id] == "United Nations"


def test_best_window_of_several(ipcc_example, bert_tokenizer):
    features = one_feature(ipcc_example, bert_tokenizer, max_seq_length=64)
    assert len(features) > 1
    holding = [index for index, feature in enumerate(features) if feature.start_position > 0]
    start = np.zeros((len(features), 64))
    end = np.zeros((len(features), 64))
    for index in holding:
        start[index, features[index].start_position] = 10.0
        end[index, features[index].end_position] = 10.0
    predictions = postprocess_predictions([ipcc_example], features, start, end)
    assert predictions[ipcc_example.qas_id] == "the United Nations"


def test_feature_indices_reorder_logits(ipcc_example, bert_tokenizer):
    features = one_feature(ipcc_example, bert_tokenizer, max_seq_length=64)
    rng = np.random.default_rng(0)
    start = rng.normal(size=(len(features), 64))
    end = rng.normal(size=(len(features), 64))
    expected = postprocess_predictions([ipcc_example], features, start, end)

    order = rng.permutation(len(features))
    shuffled = postprocess_predictions([ipcc_example], features, start[order], end[order], feature_indices=order.tolist())
    assert shuffled == expected

    with pytest.raises(ValueError, match="exactly once"):
        postprocess_predictions([ipcc_example], features, start, end, feature_indices=[0] * len(features))


def test_mismatched_examples_rejected(ipcc_example, bert_tokenizer):
    features = one_feature(ipcc_example, bert_tokenizer)
    other = SquadExample(qas_id="other", question="Who?", context=ipcc_example.context, answers=[])
    logits = np.zeros((1, 384))
    with pytest.raises(ValueError, match="does not match the examples given"):
        postprocess_predictions([other], features, logits, logits)
    with pytest.raises(ValueError, match="does not match the examples given"):
        postprocess_predictions([], features, logits, logits)


def test_torch_half_logits(ipcc_example, bert_tokenizer):
    features = one_feature(ipcc_example, bert_tokenizer)
    start = torch.zeros(1, 384, dtype=torch.bfloat16)
    end = torch.zeros(1, 384, dtype=torch.bfloat16)
    start[0, features[0].start_position] = 8.0
    end[0, features[0].end_position] = 8.0
    assert postprocess_predictions([ipcc_example], features, start, end) == {ipcc_example.qas_id: "the United Nations"}


def test_invalid_logits_rejected(ipcc_example, bert_tokenizer):
    features = one_feature(ipcc_example, bert_tokenizer)
    with pytest.raises(ValueError, match=r"start_logits has shape \(1, 128\), expected \(1, 384\)"):
        postprocess_predictions([ipcc_example], features, np.zeros((1, 128)), np.zeros((1, 384)))
    broken = np.zeros((1, 384))
    broken[0, 7] = np.nan
    with pytest.raises(ValueError, match="end_logits contains NaN"):
        postprocess_predictions([ipcc_example], features, np.zeros((1, 384)), broken)


def test_null_answer_threshold(ipcc_example, bert_tokenizer, tmp_path):
    features = one_feature(ipcc_example, bert_tokenizer)
    start = np.zeros((1, 384))
    end = np.zeros((1, 384))
    start[0, 0], end[0, 0] = 6.0, 6.0  # null score 12
    start[0, features[0].start_position] = 5.0
    end[0, features[0].end_position] = 5.0  # best answer score 10

    empty = postprocess_predictions(
        [ipcc_example], features, start, end, version_2_with_negative=True, null_score_diff_threshold=0.0, output_dir=tmp_path
    )
    assert empty == {ipcc_example.qas_id: ""}
    assert json.loads((tmp_path / "null_odds.json").read_text()) == {ipcc_example.qas_id: 2.0}
    nbest = json.loads((tmp_path / "nbest_predictions.json").read_text())[ipcc_example.qas_id]
    assert nbest[0]["text"] == ""
    assert nbest[1]["text"] == "the United Nations"

    answered = postprocess_predictions(
        [ipcc_example], features, start, end, version_2_with_negative=True, null_score_diff_threshold=2.5
    )
    assert answered == {ipcc_example.qas_id: "the United Nations"}


def test_no_valid_span_answers_empty(bert_tokenizer, caplog):
    example = SquadExample(qas_id="q", question="Which?", context="Yes.", answers=[])
    features = one_feature(example, bert_tokenizer, max_seq_length=16)
    start = np.zeros((1, 16))
    end = np.zeros((1, 16))
    end[0, :] = -5.0
    end[0, 1] = 5.0  # every top end lies in the question or padding
    with caplog.at_level(logging.WARNING):
        predictions = postprocess_predictions([example], features, start, end, n_best_size=1)
    assert predictions == {"q": ""}
    assert "no valid answer span" in caplog.text
