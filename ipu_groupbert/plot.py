"""Plot the training loss of one or more runs against step and against training FLOPs, to a PNG file.

    python -m ipu_groupbert.plot output/groupbert_tiny output/bert_tiny --output loss.png

Each run is a run folder (or its metrics.jsonl). The FLOP axis uses the cumulative analytic
training FLOPs logged with every step, so runs of different models compare at equal compute.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .checkpoint import METRICS_FILE


def read_metrics(run: str | Path, metric: str) -> tuple[list[int], list[float], list[float]]:
    """Return (steps, training FLOPs, metric values) of a run's logged training steps."""
    path = Path(run)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass a run folder (training.checkpoint_output_dir) or its {METRICS_FILE}")
    steps, flops, values = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error})") from error
        if "split" in record or metric not in record:
            continue
        steps.append(record["step"])
        flops.append(record.get("training_flops", float("nan")))
        values.append(float(record[metric]))
    if not steps:
        raise ValueError(f"{path} has no training records with {metric!r}")
    return steps, flops, values


def plot_runs(runs: list[str | Path], output: str | Path, metric: str = "loss", labels: list[str] | None = None) -> Path:
    """Draw `metric` against step (left) and training FLOPs (right) for every run; return the PNG path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    labels = labels or [Path(run).name if Path(run).is_dir() else Path(run).parent.name for run in runs]
    if len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs; give one label per run")
    figure, (by_step, by_flops) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run, label in zip(runs, labels):
        steps, flops, values = read_metrics(run, metric)
        by_step.plot(steps, values, label=label)
        by_flops.plot(flops, values, label=label)
    by_step.set_xlabel("optimizer step")
    by_flops.set_xlabel("training FLOPs")
    by_flops.set_xscale("log")
    for axes in (by_step, by_flops):
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders or metrics.jsonl files")
    parser.add_argument("--output", default="loss.png", help="PNG file to write (default: loss.png)")
    parser.add_argument("--metric", default="loss", help="metrics.jsonl column to plot (default: loss)")
    parser.add_argument("--labels", nargs="+", help="legend labels, one per run (default: folder names)")
    args = parser.parse_args(argv)
    try:
        path = plot_runs(args.runs, args.output, args.metric, args.labels)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
