"""Double of `popdist.poptorch` (test double): Options preset for this PopRun instance."""

from __future__ import annotations

import poptorch as _poptorch
from poptorch._record import RECORD


class Options(_poptorch.Options):
    def __init__(self, ipus_per_replica=1):
        super().__init__()
        environment = RECORD.poprun
        if environment is None:
            raise RuntimeError("popdist.poptorch.Options needs PopRun")
        self.ipus_per_replica = ipus_per_replica
        self.replicationFactor(environment.local_replicas)
        self.Distributed.configureProcessId(environment.instance, environment.instances)
