"""Input readers: WikiText-2, plain text files and folders, input classification."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.sentences import split_sentences
from pipelines.sources import InputCounts, iter_documents, resolve_inputs
from test_data_common import WIKITEXT_DIR, read_documents


def read(paths):
    counts = InputCounts()
    return list(iter_documents(resolve_inputs(paths), counts=counts)), counts


@pytest.mark.parametrize(("split", "articles"), [("valid.txt", 60), ("test.txt", 62)])
def test_wikitext_article_count(shared_data, split, articles):
    documents = read_documents(shared_data / WIKITEXT_DIR / split)
    assert len(documents) == articles


def test_wikitext_spot_check(shared_data):
    documents = read_documents(shared_data / WIKITEXT_DIR / "valid.txt")
    first = documents[0]
    assert first.title == "Homarus gammarus"
    assert first.paragraphs[0].startswith("Homarus gammarus , known as the European lobster or common lobster")
    assert "species of [UNK] lobster" in first.paragraphs[0]
    assert "weigh 0.7 – 2.2 kg" in first.paragraphs[1]
    for document in documents:
        for paragraph in document.paragraphs:
            assert "@-@" not in paragraph
            assert "@,@" not in paragraph
            assert "<unk>" not in paragraph
            assert not paragraph.startswith("=")
    assert [doc.title for doc in documents[1:3]] == ["Frank [UNK]", "M-82 ( Michigan highway )"]


def test_wikitext_sentences_split(shared_data):
    first = read_documents(shared_data / WIKITEXT_DIR / "valid.txt")[0]
    sentences = split_sentences(first.paragraphs[0])
    assert sentences[0] == (
        "Homarus gammarus , known as the European lobster or common lobster , is a species of [UNK] lobster "
        "from the eastern Atlantic Ocean , Mediterranean Sea and parts of the Black Sea ."
    )
    assert sentences[1] == "It is closely related to the American lobster , H. americanus ."
    assert len(sentences) == 6


def test_plain_text_documents_separated_by_blank_lines(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n\nFirst document, line one.\nFirst document, line two.\n\n\n  \nSecond document.\r\nStill second.\n",
        encoding="utf-8",
    )
    documents, counts = read([corpus])
    assert [doc.paragraphs for doc in documents] == [
        ["First document, line one.", "First document, line two."],
        ["Second document.", "Still second."],
    ]
    assert counts.documents == 2
    assert documents[1].source.endswith("corpus.txt, line 8")


def test_folder_read_in_sorted_order(tmp_path):
    folder = tmp_path / "texts"
    (folder / "b").mkdir(parents=True)
    (folder / "b" / "two.txt").write_text("Two.", encoding="utf-8")
    (folder / "a.txt").write_text("One.", encoding="utf-8")
    (folder / ".hidden.txt").write_text("Hidden.", encoding="utf-8")
    with gzip.open(folder / "c.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write("Three.\n\nFour.\n")
    documents, _ = read([folder])
    # A document never spans files, even without a closing blank line.
    assert [doc.paragraphs for doc in documents] == [["One."], ["Two."], ["Three."], ["Four."]]


def test_empty_folder_rejected(tmp_path):
    with pytest.raises(ValueError, match="contains no files"):
        resolve_inputs([tmp_path])


def test_missing_path_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="input not found"):
        resolve_inputs([str(tmp_path / "absent.txt")])


def test_dataset_names_classified_without_loading():
    sources = resolve_inputs(["wikitext:wikitext-103-raw-v1", "Salesforce/wikitext"])
    assert [source.kind for source in sources] == ["hf_hub", "hf_hub"]
    assert sources[0].fingerprint() == {"kind": "hf_hub", "name": "wikitext:wikitext-103-raw-v1"}


def test_file_fingerprint_changes_with_content(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("One sentence.", encoding="utf-8")
    before = resolve_inputs([corpus])[0].fingerprint()
    corpus.write_text("One sentence, longer now.", encoding="utf-8")
    assert resolve_inputs([corpus])[0].fingerprint() != before


def test_unknown_dataset_name_reported_offline():
    # A subprocess with offline mode set before `datasets` is imported, so no request leaves the machine.
    code = (
        "from pipelines.sources import InputCounts, iter_documents, resolve_inputs\n"
        "list(iter_documents(resolve_inputs(['no-such-dataset-xyz']), counts=InputCounts()))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "could not load the Hugging Face dataset 'no-such-dataset-xyz'" in result.stderr
    assert "local Hugging Face cache" in result.stderr
