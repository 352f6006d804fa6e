"""Fine-tune a pre-trained GroupBERT or BERT checkpoint on SQuAD, then predict and score.

    python run_squad.py --config squad_groupbert_base.yaml --training.checkpoint_input_dir RUN_OR_STEP_DIR

`--help` lists every key with its type, unit and default.
"""

from __future__ import annotations

import logging
import sys

from ipu_groupbert.config import parse_args
from ipu_groupbert.squad import main


def cli(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_args(argv, description="Fine-tune GroupBERT or BERT on SQuAD and evaluate the predictions.")
    main(config)


if __name__ == "__main__":
    cli(sys.argv[1:])
