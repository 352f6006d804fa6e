"""Double of `poptorch` 3.x (test double; see the package docstring of `poptorch_double`).

Covers the part of PopTorch's API the product uses, with the same names and argument checks,
and records every call in `RECORD`. Annotations are inert, as PopTorch's are outside IPU
compilation. Executors run the plain model on the CPU, one micro-batch at a time, in the order
PopART reads a combined batch ([device_iterations, gradient_accumulation, replicas, micro-batch]);
they never compute gradients or update weights.
"""

from __future__ import annotations

import collections
import enum
import pickle
from collections import OrderedDict

import torch

from . import optim  # noqa: F401  (poptorch.optim is imported with poptorch)
from ._record import RECORD, PopRunEnvironment  # noqa: F401

__version__ = "3.3.0+double"


# ----- enums --------------------------------------------------------------------------------------


class OutputMode(enum.IntEnum):
    All = 0
    Final = 1
    EveryN = 2
    Sum = 3
    Default = 4


class ReductionType(enum.IntEnum):
    Sum = 0
    Mean = 1
    NoReduction = 2


class MeanReductionStrategy(enum.IntEnum):
    Running = 0
    Post = 1


class AutoStage(enum.IntEnum):
    SameAsIpu = 0
    AutoIncrement = 1


class MatMulSerializationMode(enum.Enum):
    InputChannels = "input_channels"
    ReducingDim = "reducing_dim"
    OutputChannels = "output_channels"
    Disabled = "none"


class ConnectionType(enum.IntEnum):
    Always = 0
    OnDemand = 1
    Never = 2


# ----- annotations and ops -----------------------------------------------------------------------


class _BlockHook:
    def __init__(self, user_id, ipu_id):
        self.user_id = user_id
        self.ipu_id = ipu_id

    def __call__(self, module, inputs):
        RECORD.block_starts.append((self.user_id, self.ipu_id))


def BeginBlock(layer_to_call, user_id=None, ipu_id=None):
    if not isinstance(layer_to_call, torch.nn.Module):
        raise TypeError("module is not an instance of torch.nn.Module")
    if any(isinstance(hook, _BlockHook) for hook in layer_to_call._forward_pre_hooks.values()):
        raise RuntimeError("module has already been assigned to a block.")
    layer_to_call.register_forward_pre_hook(_BlockHook(user_id, ipu_id))
    RECORD.blocks.append((layer_to_call, user_id, ipu_id))
    return layer_to_call


def removeBlocks(module):
    assert isinstance(module, torch.nn.Module)
    for submodule in module.modules():
        hooks = submodule._forward_pre_hooks
        other_hooks = OrderedDict((key, hook) for key, hook in hooks.items() if not isinstance(hook, _BlockHook))
        RECORD.removed_blocks += len(hooks) - len(other_hooks)
        submodule._forward_pre_hooks = other_hooks


def recomputationCheckpoint(*tensors):
    if len(tensors) == 1 and isinstance(tensors[0], (tuple, list)):
        return type(tensors[0])(recomputationCheckpoint(*tensors[0]))
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor):
            raise ValueError("All inputs must be tensors")
    RECORD.recomputation_checkpoints += len(tensors)
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def serializedMatMul(lhs, rhs, mode, factor=0, keep_precision=False):
    assert isinstance(mode, MatMulSerializationMode)
    assert isinstance(factor, int)
    RECORD.serialized_matmuls.append((mode.name, factor))
    return torch.matmul(lhs, rhs)


def identity_loss(x, reduction):
    if reduction == "none":
        return x
    if reduction == "sum":
        return x.sum()
    if reduction == "mean":
        return x.mean()
    raise ValueError(f"reduction must be sum, mean or none, got {reduction!r}")


def ipuHardwareIsAvailable(num_ipus=1):
    return RECORD.hardware_available


# ----- options ------------------------------------------------------------------------------------


class PipelinedExecution:
    def __init__(self, *args):
        self.auto_stage = args[0] if len(args) == 1 and isinstance(args[0], AutoStage) else None
        self.stages = args if self.auto_stage is None else ()


class TensorLocationSettings:
    def __init__(self):
        self.values = {}

    def useOnChipStorage(self, use=True):
        assert isinstance(use, bool)
        self.values["onChip"] = int(use)
        return self

    def useReplicatedTensorSharding(self, use=True):
        assert isinstance(use, bool)
        self.values["useReplicatedTensorSharding"] = int(use)
        return self

    def minElementsForReplicatedTensorSharding(self, min_elements):
        assert isinstance(min_elements, int)
        self.values["minElementsForReplicatedTensorSharding"] = min_elements
        return self


class _Section:
    """A group of options (Training, Precision, ...) that logs its calls into the parent's `calls`."""

    def __init__(self, parent, name):
        self._parent = parent
        self._name = name

    def _record(self, method, *args):
        self._parent.calls.append((f"{self._name}.{method}", args))


class _TrainingOptions(_Section):
    def __init__(self, parent):
        super().__init__(parent, "Training")
        self.gradient_accumulation = 1
        self.reduction_type = ReductionType.Mean
        self.mean_reduction_strategy = None
        self.automatic_loss_scaling = False

    def gradientAccumulation(self, gradient_accumulation):
        assert isinstance(gradient_accumulation, int) and gradient_accumulation >= 1
        self._record("gradientAccumulation", gradient_accumulation)
        self.gradient_accumulation = gradient_accumulation
        return self

    def accumulationAndReplicationReductionType(self, reduction_type):
        if not isinstance(reduction_type, ReductionType) or reduction_type == ReductionType.NoReduction:
            raise ValueError("accumulationAndReplicationReductionType must be set to poptorch.ReductionType.Mean "
                             "or poptorch.ReductionType.Sum")
        self._record("accumulationAndReplicationReductionType", reduction_type)
        self.reduction_type = reduction_type
        return self

    def setMeanAccumulationAndReplicationReductionStrategy(self, strategy):
        assert isinstance(strategy, MeanReductionStrategy)
        self._record("setMeanAccumulationAndReplicationReductionStrategy", strategy)
        self.mean_reduction_strategy = strategy
        return self

    def setAutomaticLossScaling(self, enabled):
        assert isinstance(enabled, bool)
        self._record("setAutomaticLossScaling", enabled)
        self.automatic_loss_scaling = enabled
        return self


class _PrecisionOptions(_Section):
    def __init__(self, parent):
        super().__init__(parent, "Precision")
        self.partials_type = None
        self.stochastic_rounding = False

    def setPartialsType(self, dtype):
        if dtype not in (torch.float, torch.half):
            raise ValueError("parameter to setPartialsType should be either torch.float or torch.half")
        self._record("setPartialsType", dtype)
        self.partials_type = dtype
        return self

    def enableStochasticRounding(self, enabled):
        assert isinstance(enabled, bool)
        self._record("enableStochasticRounding", enabled)
        self.stochastic_rounding = enabled
        return self


class _TensorLocationOptions(_Section):
    def __init__(self, parent):
        super().__init__(parent, "TensorLocations")
        self.optimizer_location = None

    def setOptimizerLocation(self, location):
        assert isinstance(location, TensorLocationSettings)
        self._record("setOptimizerLocation", dict(location.values))
        self.optimizer_location = dict(location.values)
        return self


class _DistributedOptions(_Section):
    def __init__(self, parent):
        super().__init__(parent, "Distributed")
        self.processId = 0
        self.numProcesses = 1

    def configureProcessId(self, process_id, num_processes):
        self._record("configureProcessId", process_id, num_processes)
        self.processId = process_id
        self.numProcesses = num_processes
        return self


class _PopartOptions(_Section):
    def __init__(self, parent):
        super().__init__(parent, "_Popart")
        self.options = {}

    def set(self, key, value):
        self._record("set", key, value)
        self.options[key] = value
        return self


class Options:
    def __init__(self):
        self.calls = []
        self.replication_factor = 1
        self.device_iterations = 1
        self.output_mode = OutputMode.Default
        self.random_seed = None
        self.executable_cache = None
        self.available_memory_proportion = {}
        self.execution_strategy = None
        self.auto_round_num_ipus = False
        self.synthetic_data = False
        self.offline_ipu_version = None
        self.connection_type = ConnectionType.Always
        self.Training = _TrainingOptions(self)
        self.Precision = _PrecisionOptions(self)
        self.TensorLocations = _TensorLocationOptions(self)
        self.Distributed = _DistributedOptions(self)
        self._Popart = _PopartOptions(self)
        RECORD.options.append(self)

    def replicationFactor(self, replication_factor):
        assert isinstance(replication_factor, int) and replication_factor >= 1
        self.calls.append(("replicationFactor", (replication_factor,)))
        self.replication_factor = replication_factor
        return self

    def deviceIterations(self, device_iterations):
        assert isinstance(device_iterations, int) and device_iterations >= 1
        self.calls.append(("deviceIterations", (device_iterations,)))
        self.device_iterations = device_iterations
        return self

    def outputMode(self, output_mode, output_return_period=None):
        assert isinstance(output_mode, OutputMode)
        self.calls.append(("outputMode", (output_mode,)))
        self.output_mode = output_mode
        return self

    def randomSeed(self, random_seed):
        assert isinstance(random_seed, int)
        self.calls.append(("randomSeed", (random_seed,)))
        torch.manual_seed(random_seed)  # as PopTorch's randomSeed does
        self.random_seed = random_seed
        return self

    def enableExecutableCaching(self, path):
        self.calls.append(("enableExecutableCaching", (path,)))
        self.executable_cache = path
        return self

    def setAvailableMemoryProportion(self, available_memory_proportion):
        for key in available_memory_proportion:
            assert key.startswith("IPU"), f"Invalid key: {key}"
        self.calls.append(("setAvailableMemoryProportion", (dict(available_memory_proportion),)))
        self.available_memory_proportion = {int(key[3:]): value for key, value in available_memory_proportion.items()}
        return self

    def setExecutionStrategy(self, strategy):
        assert isinstance(strategy, PipelinedExecution)
        self.calls.append(("setExecutionStrategy", (strategy,)))
        self.execution_strategy = strategy
        return self

    def autoRoundNumIPUs(self, auto_round_num_ipus=True):
        self.calls.append(("autoRoundNumIPUs", (auto_round_num_ipus,)))
        self.auto_round_num_ipus = auto_round_num_ipus
        return self

    def enableSyntheticData(self, enabled):
        assert isinstance(enabled, bool)
        self.calls.append(("enableSyntheticData", (enabled,)))
        self.synthetic_data = enabled
        return self

    def useOfflineIpuTarget(self, ipu_version=2):
        self.calls.append(("useOfflineIpuTarget", (ipu_version,)))
        self.connection_type = ConnectionType.Never
        self.offline_ipu_version = ipu_version
        return self

    def connectionType(self, connection_type):
        assert isinstance(connection_type, ConnectionType)
        self.calls.append(("connectionType", (connection_type,)))
        self.connection_type = connection_type
        return self

    def call_names(self):
        return [name for name, _ in self.calls]


# ----- data loading -------------------------------------------------------------------------------


class DataLoaderMode(enum.IntEnum):
    Sync = 0
    Async = 1
    AsyncRebatched = 2


class SharingStrategy(enum.IntEnum):
    SharedMemory = 0
    FileSystem = 1
    Fork = 2
    ForkServer = 3


class DataLoader(torch.utils.data.DataLoader):
    """PopTorch 3.x's DataLoader as documented: torch's DataLoader with the combined batch size.

    Each batch has batch_size x device_iterations x replication_factor x gradient_accumulation
    elements, read in dataset order. The constructor's arguments are recorded in
    `RECORD.data_loaders`. Asynchronous mode reads a pickled copy of the dataset (as PopTorch's
    worker process does with its default file-system sharing) and keeps `buffer_size` batches read
    ahead of the consumer, in this process rather than another one.
    """

    def __init__(self, options, dataset, batch_size=1, shuffle=False, num_workers=0, drop_last=True,
                 persistent_workers=None, auto_distributed_partitioning=True, mode=DataLoaderMode.Sync,
                 async_options=None, rebatched_worker_size=None, **kwargs):
        assert isinstance(options, Options)
        if not isinstance(mode, DataLoaderMode):
            raise TypeError(f"mode must be a poptorch.DataLoaderMode, got {mode!r}")
        if mode == DataLoaderMode.AsyncRebatched:
            raise NotImplementedError("the double does not emulate DataLoaderMode.AsyncRebatched")
        RECORD.data_loaders.append(self)
        self.arguments = {
            "options": options, "dataset": dataset, "batch_size": batch_size, "shuffle": shuffle,
            "num_workers": num_workers, "drop_last": drop_last, "persistent_workers": persistent_workers,
            "auto_distributed_partitioning": auto_distributed_partitioning, "mode": mode,
            "async_options": dict(async_options or {}), "rebatched_worker_size": rebatched_worker_size, **kwargs,
        }
        self._options = options
        self._combined_batch_size = None if batch_size is None else (
            batch_size * options.device_iterations * options.replication_factor
            * options.Training.gradient_accumulation
        )
        if isinstance(dataset, torch.utils.data.IterableDataset):
            if auto_distributed_partitioning and options.Distributed.numProcesses != 1:
                raise AssertionError("auto_distributed_partitioning not supported for IterableDataset")
        elif options.Distributed.numProcesses > 1 and auto_distributed_partitioning:
            raise NotImplementedError("the double does not partition map-style datasets between processes")
        if persistent_workers is None:
            persistent_workers = num_workers > 0
        super().__init__(dataset, batch_size=self._combined_batch_size, shuffle=shuffle, num_workers=num_workers,
                         drop_last=drop_last, persistent_workers=persistent_workers, **kwargs)
        self._mode = mode
        self._buffer_size = self.arguments["async_options"].get("buffer_size", 3)
        self.terminated = False

    @property
    def combinedBatchSize(self):
        return self._combined_batch_size

    @property
    def options(self):
        return self._options

    def terminate(self):
        self.terminated = True

    def __iter__(self):
        if self._mode == DataLoaderMode.Sync:
            return super().__iter__()
        return self._read_ahead()

    def _read_ahead(self):
        copy = torch.utils.data.DataLoader(
            pickle.loads(pickle.dumps(self.dataset)), batch_size=self._combined_batch_size,
            num_workers=self.num_workers, drop_last=self.drop_last, collate_fn=self.collate_fn,
        )
        batches = iter(copy)
        buffer = collections.deque()
        while True:
            while len(buffer) < self._buffer_size:
                try:
                    buffer.append(next(batches))
                except StopIteration:
                    break
            if not buffer:
                return
            RECORD.batches_read_ahead = max(RECORD.batches_read_ahead, len(buffer) - 1)
            yield buffer.popleft()


# ----- model wrappers -----------------------------------------------------------------------------


class PoplarExecutor:
    """Stands in for the compiled model: runs the plain model on the CPU per micro-batch, no training."""

    def __init__(self, model, options, training, optimizer=None):
        self.model = model
        self.options = options or Options()
        self.training = training
        self.optimizer = optimizer
        self.compile_inputs = None  # {name: (shape, dtype)} of the inputs compiled for
        self.compiled_with = None  # the input tensors themselves
        self.calls = 0
        self.call_inputs = []  # the inputs of each call, as passed
        self.set_optimizer_calls = []  # learning rate of each parameter group per setOptimizer call
        self.weight_copies = 0
        self.attached = True
        RECORD.executors.append(self)

    def _micro_batches_per_call(self):
        accumulation = self.options.Training.gradient_accumulation if self.training else 1
        return self.options.device_iterations * accumulation * self.options.replication_factor

    def compile(self, *args, **kwargs):
        if args:
            raise TypeError("the product passes inputs by keyword")
        self.compile_inputs = {key: (tuple(value.shape), value.dtype) for key, value in kwargs.items()}
        self.compiled_with = dict(kwargs)
        self._check_combined_batch(kwargs)

    def isCompiled(self):
        return self.compile_inputs is not None

    def _check_combined_batch(self, kwargs):
        count = self._micro_batches_per_call()
        for key, value in kwargs.items():
            if value is not None and value.shape[0] % count:
                raise RuntimeError(
                    f"input {key} has {value.shape[0]} rows, not a multiple of the {count} micro-batches per call"
                )

    def __call__(self, *args, **kwargs):
        if args:
            raise TypeError("the product passes inputs by keyword")
        if self.compile_inputs is None:
            self.compile(**kwargs)
        shapes = {key: (tuple(value.shape), value.dtype) for key, value in kwargs.items()}
        if shapes != self.compile_inputs:
            raise RuntimeError(f"inputs {shapes} differ from the compiled inputs {self.compile_inputs}")
        if self.training and RECORD.interrupt_at_call == self.calls + 1:
            raise KeyboardInterrupt
        self.calls += 1
        self.call_inputs.append(dict(kwargs))
        self.model.train(self.training)
        count = self._micro_batches_per_call()
        rows = next(iter(kwargs.values())).shape[0] // count
        outputs = []
        with torch.no_grad():
            for index in range(count):
                micro_batch = {key: value[index * rows:(index + 1) * rows] for key, value in kwargs.items()}
                result = self.model(**micro_batch)
                outputs.append(result if isinstance(result, tuple) else (result,))
        mode = self.options.output_mode
        if mode != OutputMode.All:
            raise NotImplementedError(f"the double only emulates OutputMode.All, not {mode!r}")
        stacked = tuple(torch.stack([output[i] for output in outputs]) for i in range(len(outputs[0])))
        return stacked if len(stacked) > 1 else stacked[0]

    def setOptimizer(self, optimizer):
        if not self.training:
            raise RuntimeError("setOptimizer is only for training models")
        self.set_optimizer_calls.append([group["lr"] for group in optimizer.param_groups])

    def copyWeightsToHost(self):
        self.weight_copies += 1

    def detachFromDevice(self):
        if not self.attached:
            raise RuntimeError("the executor is not attached to a device")
        self.attached = False

    def isAttachedToDevice(self):
        return self.attached

    def destroy(self):
        self.attached = False


def trainingModel(model, options=None, optimizer=None):
    return PoplarExecutor(model, options, training=True, optimizer=optimizer)


def inferenceModel(model, options=None):
    return PoplarExecutor(model, options, training=False)
