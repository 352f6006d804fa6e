"""The call recorder shared by the poptorch and popdist doubles (test double; see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PopRunEnvironment:
    """What PopRun would put in the environment of one instance."""

    instances: int
    instance: int
    total_replicas: int

    @property
    def local_replicas(self) -> int:
        return self.total_replicas // self.instances


@dataclass
class Recorder:
    blocks: list[tuple[Any, str, int]] = field(default_factory=list)  # (module, user_id, ipu_id) per BeginBlock
    block_starts: list[tuple[str, int]] = field(default_factory=list)  # (user_id, ipu_id) each time a block runs
    recomputation_checkpoints: int = 0
    serialized_matmuls: list[tuple[str, int]] = field(default_factory=list)  # (mode name, factor)
    removed_blocks: int = 0
    options: list[Any] = field(default_factory=list)  # every Options object created
    optimizers: list[tuple[str, dict]] = field(default_factory=list)  # (class name, constructor arguments)
    executors: list[Any] = field(default_factory=list)
    data_loaders: list[Any] = field(default_factory=list)  # every DataLoader created
    batches_read_ahead: int = 0  # most batches an asynchronous DataLoader held beyond the one it returned
    hardware_available: bool = False
    interrupt_at_call: int | None = None  # a training call that raises KeyboardInterrupt, as Ctrl-C would
    poprun: PopRunEnvironment | None = None
    popdist_initialised: bool = False

    def reset(self) -> None:
        self.__init__()


RECORD = Recorder()
