"""Pre-train GroupBERT or BERT from one YAML config.

    python run_pretraining.py --config groupbert_tiny.yaml [--section.key value ...]
    torchrun --nproc_per_node 8 run_pretraining.py --config groupbert_base.yaml

`--help` lists every key with its type, unit and default.
"""

from __future__ import annotations

import sys

from ipu_groupbert.cli import run_job, setup_logging
from ipu_groupbert.config import parse_args
from ipu_groupbert.pretraining import main


def cli(argv: list[str] | None = None) -> int:
    setup_logging()
    config = parse_args(argv, description="Pre-train GroupBERT or BERT (masked LM + next-sentence prediction).")
    return run_job(main, config)


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
