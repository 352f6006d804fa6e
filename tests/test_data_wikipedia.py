"""Wikipedia extraction on the real dump excerpt: which pages count, and how clean the text is."""

from __future__ import annotations

import bz2
import hashlib
import re

import pytest

from pipelines.sources import gensim_sample_path, resolve_inputs
from pipelines.wikipedia import (
    is_wikipedia_dump,
    iter_articles,
    iter_pages,
    main,
    wikitext_to_paragraphs,
)
from test_data_common import ENWIKI_DUMP, WIKITEXT_DIR, read_documents, read_documents_and_counts


@pytest.fixture(scope="module")
def dump(shared_data):
    return shared_data / ENWIKI_DUMP


@pytest.fixture(scope="module")
def articles(dump):
    return {document.title: document for document in read_documents(dump)}


@pytest.fixture(scope="module")
def small_dump(dump, tmp_path_factory):
    """Redirects and the shorter articles (under 16 kB of markup) of the real dump, as a dump of their own."""
    text = bz2.open(dump, "rt", encoding="utf-8").read()
    header_end = text.index("<page>")
    pages = re.findall(r"<page>.*?</page>", text, flags=re.S)
    short_pages = [page for page in pages if len(page) < 16_000]
    path = tmp_path_factory.mktemp("dump") / "small-pages-articles.xml.bz2"
    with bz2.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text[:header_end] + "\n".join(short_pages) + "\n</mediawiki>\n")
    return path


def test_article_count_and_skipped_pages(dump):
    documents, input_counts = read_documents_and_counts(dump)
    counts = input_counts.wikipedia
    assert len(documents) == 96
    assert counts.pages == 206
    assert counts.articles == 96
    assert counts.redirects == 100
    assert counts.list_pages == 2
    assert counts.disambiguation_pages == 8
    assert counts.too_short == 0
    assert "List of anthropologists" in counts.skipped_titles["list_page"]
    assert "Austin (disambiguation)" in counts.skipped_titles["disambiguation"]
    assert counts.dump_bytes == 6089746


def test_articles_keep_order_and_titles(articles):
    titles = list(articles)
    assert titles[:3] == ["Anarchism", "Autism", "Albedo"]
    assert "Abraham Lincoln" in articles
    assert "List of Atlas Shrugged characters" not in articles
    assert "AccessibleComputing" not in articles


def test_albedo_text_spot_check(articles):
    albedo = articles["Albedo"]
    assert albedo.paragraphs[0].startswith(
        'Albedo or reflection coefficient, derived from Latin albedo "whiteness" (or reflected sunlight)'
    )
    assert albedo.paragraphs[1].startswith("It is the ratio of reflected radiation from the surface")
    text = "\n".join(albedo.paragraphs)
    # The table of sample albedos, the section headings and image captions are gone.
    assert "Fresh asphalt" not in text
    assert "Terrestrial albedo" not in albedo.paragraphs
    assert "thumb" not in text
    assert "Percentage of diffusely reflected sunlight" not in text
    assert len(albedo.paragraphs) > 20


def test_no_markup_left_in_any_article(articles):
    leftovers = re.compile(r"\{\{|\}\}|\[\[|\]\]|<ref|</?[a-z]+>|\[http|\(,|\{\||\|\}|'''|==|&nbsp;|\bthumb\|")
    for title, document in articles.items():
        for paragraph in document.paragraphs:
            assert not leftovers.search(paragraph), (title, paragraph[:200])
            assert paragraph == paragraph.strip()
            assert paragraph


def test_reference_sections_dropped(articles):
    text = "\n".join(articles["Aristotle"].paragraphs)
    assert "Aristotle" in text
    assert "External links" not in articles["Aristotle"].paragraphs
    assert "ISBN" not in text


def test_workers_do_not_change_output(small_dump):
    serial = list(iter_articles(small_dump, workers=1))
    parallel = list(iter_articles(small_dump, workers=2, pages_per_task=3))
    assert [doc.title for doc in serial] == [doc.title for doc in parallel]
    assert [doc.paragraphs for doc in serial] == [doc.paragraphs for doc in parallel]
    assert len(serial) >= 10


def test_command_line_writes_text_files(small_dump, tmp_path, caplog):
    assert main([str(small_dump), "--output-dir", str(tmp_path / "out"), "--workers", "1", "--max-file-mb", "0.05"]) == 0
    files = sorted((tmp_path / "out").glob("wiki_*.txt"))
    assert len(files) > 1
    expected = list(iter_articles(small_dump, workers=1))
    written = "".join(path.read_text(encoding="utf-8") for path in files)
    documents = [block.split("\n") for block in written.strip("\n").split("\n\n")]
    assert documents == [doc.paragraphs for doc in expected]


def test_truncated_dump_reported(dump, tmp_path):
    data = bz2.open(dump).read(200_000)
    truncated = tmp_path / "truncated.xml"
    truncated.write_bytes(data)
    with pytest.raises(ValueError, match="malformed XML dump"):
        list(iter_articles(truncated))


def test_other_xml_rejected(tmp_path):
    other = tmp_path / "other.xml"
    other.write_text("<catalog><book>Text</book></catalog>", encoding="utf-8")
    with pytest.raises(ValueError, match=r"not a MediaWiki XML dump: its root element is <catalog>"):
        list(iter_pages(other))


def test_dump_detection(dump, shared_data):
    assert is_wikipedia_dump(dump)
    assert not is_wikipedia_dump(shared_data / WIKITEXT_DIR / "valid.txt")
    assert resolve_inputs([dump])[0].kind == "wikipedia"


def test_built_in_sample_is_the_real_excerpt(dump):
    sample = gensim_sample_path()
    assert hashlib.md5(sample.read_bytes()).hexdigest() == hashlib.md5(dump.read_bytes()).hexdigest()
    assert resolve_inputs([])[0].location == str(sample)


@pytest.mark.parametrize(
    ("wikitext", "expected"),
    [
        ("'''Bold''' and ''italic'' text.", ["Bold and italic text."]),
        ("A town of {{convert|60|km|mi}} across.", ["A town of 60 km across."]),
        ("Range {{convert|5|-|6|kg}} here.", ["Range 5 – 6 kg here."]),
        ("Called {{lang|fr|la ville}} locally.", ["Called la ville locally."]),
        ("Fact.<ref>{{cite web|url=x}}</ref> More.", ["Fact. More."]),
        ("See [[Paris|the capital]] and [[Lyon]].", ["See the capital and Lyon."]),
        ("[[File:Map.png|thumb|A map]]Text after.", ["Text after."]),
        ("Prose.\n* item one\n* item two\nMore prose.", ["Prose.", "More prose."]),
        ("Before.\n{| class=wikitable\n|-\n| cell\n|}\nAfter.", ["Before.", "After."]),
        ("Intro.\n== History ==\nOld times.", ["Intro.", "Old times."]),
        ("Body.\n== References ==\nSmith 2001, p. 4.\n== Notes ==\nA note.", ["Body."]),
        ("Water &amp; ice [[Category:Physics]]", ["Water & ice"]),
        ("Named ({{IPA-en|ˈæl|pron}}) here.", ["Named here."]),
    ],
)
def test_markup_removal_cases(wikitext, expected):
    assert wikitext_to_paragraphs(wikitext) == expected
