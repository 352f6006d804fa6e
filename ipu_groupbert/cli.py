"""Shared command-line behaviour of the entry points: logging setup and one-line errors."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from .checkpoint import CheckpointError
from .trainer import TrainingStopped

logger = logging.getLogger("ipu_groupbert")

# Errors about the user's input or environment: their messages name the problem and the fix, so
# a traceback adds nothing. Other exceptions are bugs and keep their traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotImplementedError, CheckpointError, TrainingStopped)
TRACEBACK_VARIABLE = "GROUPBERT_TRACEBACK"


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import transformers

    # Our own log lines report saving and loading; transformers' bars and load tables repeat them.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def run_job(job: Callable, config) -> int:
    """Run `job(config)` and return the process exit status: 0, 2 for a user error, 130 for Ctrl-C."""
    try:
        job(config)
    except USER_ERRORS as error:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        logger.error("%s", error)
        print(f"error: {error}\n(set {TRACEBACK_VARIABLE}=1 to see the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        logger.error("Interrupted")
        return 130
    return 0
