"""Double of `popdist` (test double; see the package docstring of `poptorch_double`).

A test sets `poptorch.RECORD.poprun` to a `PopRunEnvironment` to play one PopRun instance;
otherwise the process looks like it was started without PopRun.
"""

from __future__ import annotations

from poptorch._record import RECORD


def _environment():
    if RECORD.poprun is None:
        raise RuntimeError("not running under PopRun")
    return RECORD.poprun


def isPopdistEnvSet():
    return RECORD.poprun is not None


def init():
    _environment()
    RECORD.popdist_initialised = True


def getNumInstances():
    return _environment().instances


def getInstanceIndex():
    return _environment().instance


def getNumTotalReplicas():
    return _environment().total_replicas


def getNumLocalReplicas():
    return _environment().local_replicas


def getReplicaIndexOffset():
    environment = _environment()
    return environment.instance * environment.local_replicas
