"""Execution backends that need extra software: the IPU path through PopTorch.

Nothing here imports PopTorch at import time. `sdk.import_poptorch()` loads it when an IPU run
starts and raises an ImportError that says how to install the Poplar SDK's wheels when it is
missing, so CPU and CUDA runs never depend on the SDK.
"""
