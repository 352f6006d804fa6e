"""Fine-tune a pre-trained GroupBERT or BERT checkpoint on SQuAD, then predict and score.

    python run_squad.py --config squad_groupbert_base.yaml --training.checkpoint_input_dir RUN_OR_STEP_DIR

`--help` lists every key with its type, unit and default.
"""

from __future__ import annotations

import sys

from ipu_groupbert.cli import run_job, setup_logging
from ipu_groupbert.config import parse_args
from ipu_groupbert.squad import main


def cli(argv: list[str] | None = None) -> int:
    setup_logging()
    config = parse_args(argv, description="Fine-tune GroupBERT or BERT on SQuAD and evaluate the predictions.")
    return run_job(main, config)


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
