"""Training metrics: `metrics.jsonl`, a progress bar or log lines, and Weights & Biases.

Every logged step becomes one JSON object in `<run folder>/metrics.jsonl`. Throughput is measured
over the steps since the previous log line; MFU divides the achieved model FLOP rate by the
device's peak, when that peak is known.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

from .checkpoint import METRICS_FILE

logger = logging.getLogger(__name__)

# Dense peak TFLOP/s by CUDA device name and precision (vendor data sheets, without sparsity).
PEAK_TFLOPS = {
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "V100": {"fp32": 15.7, "fp16": 125.0},
    "A10G": {"fp32": 31.2, "bf16": 125.0, "fp16": 125.0},
    "L4": {"fp32": 30.3, "bf16": 121.0, "fp16": 121.0},
}


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Return the device's peak FLOP/s for `precision`, or None when it is not in `PEAK_TFLOPS` (CPUs among them)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name and precision in peaks:
            return peaks[precision] * 1e12
    return None


class MetricsLogger:
    """Write metrics of the main process to metrics.jsonl, the console and optionally Weights & Biases.

    `samples_per_step` and `tokens_per_step` count all replicas. `flops_per_step` is the analytic
    training FLOPs of one optimizer step, which gives the cumulative `training_flops` column,
    TFLOP/s and MFU.
    """

    def __init__(
        self,
        run_dir: Path | None,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int,
        samples_per_step: int,
        tokens_per_step: int,
        flops_per_step: float,
        peak_flops_per_second: float | None,
        progress_bar: bool,
        wandb_run=None,
    ):
        self.enabled = enabled
        self.samples_per_step = samples_per_step
        self.tokens_per_step = tokens_per_step
        self.flops_per_step = flops_per_step
        self.peak = peak_flops_per_second
        self.wandb_run = wandb_run
        self.file = None
        self.progress = None
        self._interval_start = time.perf_counter()
        self._interval_step = start_step
        if not enabled:
            return
        if run_dir is not None:
            path = Path(run_dir) / METRICS_FILE
            _truncate_after(path, start_step)
            self.file = open(path, "a", encoding="utf-8")
        if progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            self.progress = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc="training")

    def restart_interval(self, step: int) -> None:
        """Start timing from now, so compilation or warm-up before `step` does not count as step time."""
        self._interval_start = time.perf_counter()
        self._interval_step = step

    def log_step(self, step: int, values: dict) -> dict:
        """Record the metrics of optimizer step `step` (1-based: steps completed so far); return the full record."""
        now = time.perf_counter()
        elapsed = max(now - self._interval_start, 1e-9)
        steps = step - self._interval_step
        record = {"step": step, **values}
        record["samples_per_sec"] = steps * self.samples_per_step / elapsed
        record["tokens_per_sec"] = steps * self.tokens_per_step / elapsed
        record["training_flops"] = step * self.flops_per_step
        achieved = steps * self.flops_per_step / elapsed
        record["tflops_per_sec"] = achieved / 1e12
        record["mfu"] = achieved / self.peak if self.peak else None
        self._interval_start, self._interval_step = now, step
        if self.enabled:
            self._write(record)
            self._show(step, record)
        return record

    def log_event(self, record: dict) -> None:
        """Write a non-step record (for example the final evaluation) to metrics.jsonl and the log."""
        if not self.enabled:
            return
        self._write(record)
        logger.info("%s", " ".join(f"{key}={_format(value)}" for key, value in record.items()))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.file is not None:
            self.file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()

    def _write(self, record: dict) -> None:
        clean = {key: _json_value(value) for key, value in record.items()}
        if self.file is not None:
            self.file.write(json.dumps(clean) + "\n")
            self.file.flush()
        if self.wandb_run is not None:
            step = record.get("step")
            self.wandb_run.log({k: v for k, v in clean.items() if k != "step" and v is not None}, step=step)

    def _show(self, step: int, record: dict) -> None:
        summary = {
            "loss": record.get("loss"),
            "mlm_acc": record.get("mlm_accuracy"),
            "nsp_acc": record.get("nsp_accuracy"),
            "lr": record.get("learning_rate"),
        }
        text = " ".join(f"{key}: {_format(value)}" for key, value in summary.items() if value is not None)
        text += f" throughput: {record['samples_per_sec']:.1f} samples/sec"
        if self.progress is not None:
            self.progress.set_postfix_str(text, refresh=False)
            self.progress.update(step - self.progress.n)
        else:
            logger.info("step %d %s tokens/sec: %.0f", step, text, record["tokens_per_sec"])


def start_wandb(logging_config, run_config_dict: dict, run_dir: Path, default_name: str):
    """Start a Weights & Biases run; WANDB_MODE=offline in the environment keeps it local."""
    import wandb

    return wandb.init(
        project=logging_config.wandb_project,
        name=logging_config.wandb_run_name or default_name,
        config=run_config_dict,
        dir=str(run_dir),
    )


def _truncate_after(path: Path, step: int) -> None:
    """Drop records after `step`, left by a run that stopped after its last checkpoint (resume rewrites them)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if record.get("step", 0) <= step and "split" not in record:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _json_value(value):
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
