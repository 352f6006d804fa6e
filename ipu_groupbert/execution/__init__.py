"""Execution backends that need extra software: the IPU path through PopTorch.

Nothing here imports PopTorch at import time. `sdk.import_poptorch()` loads it when an IPU run
starts. When PopTorch is missing, it raises an ImportError that explains how to install the
Poplar SDK's wheels, so CPU and CUDA runs never depend on the SDK.
"""
