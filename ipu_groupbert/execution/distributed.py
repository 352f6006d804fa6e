"""Multi-host IPU runs under PopRun: the instance's place in the job and host-side collectives.

PopRun starts one process (instance) per host group and passes each, through PopDist, the number
of replicas it drives. The IPUs reduce gradients across all replicas themselves. The host needs
collectives only for small things:
- summing the per-step token counts that normalise the loss, and the logged statistics;
- waiting for instance 0 to prepare the data;
- gathering the data-loader positions that instance 0 writes into checkpoints. Those go through MPI (PopRun launches the
instances with mpirun), using mpi4py or, where the SDK's Horovod is installed, Horovod.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from ..config import ConfigError, RunConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PopRunContext:
    """This process's place in an IPU job (instance 0 of 1 when not started by PopRun)."""

    instances: int = 1
    instance: int = 0
    local_replicas: int = 1
    under_poprun: bool = False

    @property
    def is_main(self) -> bool:
        return self.instance == 0

    @property
    def total_replicas(self) -> int:
        return self.instances * self.local_replicas

    @property
    def replica_offset(self) -> int:
        """Global index of this instance's first replica (replicas are numbered instance by instance)."""
        return self.instance * self.local_replicas


def init_poprun(config: RunConfig, popdist: ModuleType | None) -> tuple[RunConfig, PopRunContext]:
    """Initialise PopDist when PopRun started this process; return the config with the local replica count.

    `popdist` is the imported package, or None when it is not installed (then the run must not be
    under PopRun). `execution.replication_factor` may count the replicas of this instance or of
    the whole job, as Graphcore's applications do. Any other value raises ConfigError, because the
    global batch would silently differ from the one configured.
    """
    replication = config.execution.replication_factor
    if popdist is None or not popdist.isPopdistEnvSet():
        return config, PopRunContext(local_replicas=replication)

    popdist.init()
    instances = int(popdist.getNumInstances())
    instance = int(popdist.getInstanceIndex())
    local = int(popdist.getNumLocalReplicas())
    total = int(popdist.getNumTotalReplicas())
    if replication not in (local, total):
        origin = config.provenance.get("execution.replication_factor", "built-in default")
        raise ConfigError(
            f"execution.replication_factor ({origin}) is {replication}, but PopRun started {instances} instances "
            f"with {total} replicas in total ({local} per instance); set --replication-factor {total} (or "
            f"{local}), or change poprun's --num-replicas"
        )
    if replication != local:
        logger.info(
            "PopRun: %d instances x %d local replicas; execution.replication_factor %d counts the whole job, "
            "so each instance runs %d", instances, local, replication, local,
        )
        config = config.updated({"execution.replication_factor": local}, source="PopRun (--num-replicas / instances)")
    context = PopRunContext(instances=instances, instance=instance, local_replicas=local, under_poprun=True)
    return config, context


class InstanceCommunicator(Protocol):
    """Host-side collectives across PopRun instances."""

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Return the element-wise sum of `values` (float64) over all instances."""

    def barrier(self) -> None:
        """Wait until every instance arrives."""

    def gather(self, value: Any) -> list[Any] | None:
        """Return every instance's `value` on instance 0 (in instance order) and None elsewhere."""


class SingleInstance:
    """The collectives of a job with one instance: identities."""

    def sum(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)

    def barrier(self) -> None:
        pass

    def gather(self, value: Any) -> list[Any] | None:
        return [value]


class MpiCommunicator:
    """Collectives over mpi4py's COMM_WORLD, which PopRun's mpirun launch sets up."""

    def __init__(self, mpi: ModuleType):
        self.mpi = mpi
        self.comm = mpi.COMM_WORLD

    def sum(self, values: np.ndarray) -> np.ndarray:
        values = np.ascontiguousarray(values, dtype=np.float64)
        result = np.empty_like(values)
        self.comm.Allreduce(values, result, op=self.mpi.SUM)
        return result

    def barrier(self) -> None:
        self.comm.Barrier()

    def gather(self, value: Any) -> list[Any] | None:
        return self.comm.gather(value, root=0)


class HorovodCommunicator:
    """Collectives over the Horovod build that older Poplar SDKs ship for PopTorch."""

    def __init__(self, hvd: ModuleType):
        import torch

        self.hvd = hvd
        self.torch = torch
        hvd.init()

    def sum(self, values: np.ndarray) -> np.ndarray:
        tensor = self.torch.as_tensor(np.asarray(values, dtype=np.float64))
        return self.hvd.allreduce(tensor, op=self.hvd.Sum).numpy()

    def barrier(self) -> None:
        self.sum(np.zeros(1))

    def gather(self, value: Any) -> list[Any] | None:
        values = self.hvd.allgather_object(value)
        return values if self.hvd.rank() == 0 else None


def create_communicator(context: PopRunContext) -> InstanceCommunicator:
    """Return the collectives for this job: identities for one instance, else MPI or Horovod."""
    if context.instances == 1:
        return SingleInstance()
    try:
        from mpi4py import MPI

        return MpiCommunicator(MPI)
    except ImportError:
        pass
    try:
        import horovod.torch as hvd

        return HorovodCommunicator(hvd)
    except ImportError:
        raise ImportError(
            f"this PopRun job has {context.instances} instances, which share token counts and metrics over MPI; "
            f"install mpi4py in the environment (`pip install mpi4py`, built against the MPI that poprun uses)"
        ) from None
