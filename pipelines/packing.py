"""Sequence packing: several short sequences share one row of ``sequence_length`` tokens.

The packer is shortest-pack-first histogram packing (SPFHP) from Krell et al.,
"Efficient Sequence Packing without Cross-contamination" (Graphcore, 2021). It works on
the histogram of sequence lengths, not on single sequences, so its cost depends on the
sequence length and not on the dataset size:

1. Lengths are visited from the longest to the shortest.
2. The sequences of one length go into open packs that have room for them. SPFHP takes
   the pack with the most free space first (the shortest pack). A pack is a strategy
   (its list of lengths) times a repeat count, so a group of identical packs is filled
   or split in one step.
3. Sequences that fit no open pack start new packs.
4. A pack closes when it is full or contains ``max_sequences_per_pack`` sequences.

``plan_packing`` also plans with best fit in step 2 (the pack with the least free space
that still fits) and keeps whichever plan has the higher efficiency, so the result is
never worse than SPFHP. Planning is cheap (milliseconds for sequence length 512).

The plan is fixed for a dataset; each epoch fills it with differently shuffled
sequences of the planned lengths (``assign_rows``).

Run ``python -m pipelines.packing --help`` for the efficiency report on prepared data.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PackingPlan:
    """Packing strategies: each is a tuple of sequence lengths filling one row, used ``repeat`` times."""

    sequence_length: int
    max_sequences_per_pack: int
    strategies: tuple[tuple[int, ...], ...]
    repeats: tuple[int, ...]

    @property
    def rows(self) -> int:
        return int(sum(self.repeats))

    @property
    def sequences(self) -> int:
        return int(sum(len(strategy) * repeat for strategy, repeat in zip(self.strategies, self.repeats)))

    @property
    def real_tokens(self) -> int:
        return int(sum(sum(strategy) * repeat for strategy, repeat in zip(self.strategies, self.repeats)))

    @property
    def efficiency(self) -> float:
        """Real tokens divided by row capacity (rows x sequence_length)."""
        return self.real_tokens / max(1, self.rows * self.sequence_length)


def padding_efficiency(lengths: np.ndarray, sequence_length: int) -> float:
    """Real tokens divided by capacity with one sequence per row (no packing)."""
    return float(np.sum(lengths, dtype=np.int64)) / max(1, len(lengths) * sequence_length)


def plan_packing(lengths: np.ndarray, sequence_length: int, max_sequences_per_pack: int) -> PackingPlan:
    """Plan the packing of sequences with the given lengths (see the module docstring)."""
    if max_sequences_per_pack < 1:
        raise ValueError(f"max_sequences_per_pack must be at least 1, got {max_sequences_per_pack}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.min() < 1 or lengths.max() > sequence_length):
        raise ValueError(
            f"sequence lengths must lie in [1, {sequence_length}], found {lengths.min()} to {lengths.max()}"
        )
    histogram = np.bincount(lengths, minlength=sequence_length + 1)
    shortest_first = _plan_from_histogram(histogram, sequence_length, max_sequences_per_pack, best_fit=False)
    best_fit = _plan_from_histogram(histogram, sequence_length, max_sequences_per_pack, best_fit=True)
    return best_fit if best_fit.efficiency > shortest_first.efficiency else shortest_first


def _plan_from_histogram(
    histogram: np.ndarray, sequence_length: int, max_sequences_per_pack: int, *, best_fit: bool
) -> PackingPlan:
    # open_packs[free] contains the [strategy, repeat] groups with that much free space.
    open_packs: list[list[list]] = [[] for _ in range(sequence_length + 1)]
    closed: dict[tuple[int, ...], int] = {}

    def add(strategy: tuple[int, ...], repeat: int) -> None:
        free = sequence_length - sum(strategy)
        if free == 0 or len(strategy) == max_sequences_per_pack:
            closed[strategy] = closed.get(strategy, 0) + repeat
        else:
            open_packs[free].append([strategy, repeat])

    for length in range(sequence_length, 0, -1):
        remaining = int(histogram[length])
        spaces = range(length, sequence_length) if best_fit else range(sequence_length - 1, length - 1, -1)
        while remaining > 0:
            free = next((space for space in spaces if open_packs[space]), None)
            if free is None:
                add((length,), remaining)
                break
            groups = open_packs[free]
            strategy, repeat = groups[-1]
            filled = min(repeat, remaining)
            if filled == repeat:
                groups.pop()
            else:
                groups[-1][1] = repeat - filled
            add(strategy + (length,), filled)
            remaining -= filled

    for groups in open_packs:
        for strategy, repeat in groups:
            closed[strategy] = closed.get(strategy, 0) + repeat
    strategies = tuple(sorted(closed))
    return PackingPlan(
        sequence_length=sequence_length,
        max_sequences_per_pack=max_sequences_per_pack,
        strategies=strategies,
        repeats=tuple(closed[strategy] for strategy in strategies),
    )


def assign_rows(plan: PackingPlan, lengths: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Fill the plan with sequence indices; returns [rows, max_sequences_per_pack], -1 for unused slots.

    Sequences of each length are taken in the given ``order`` (a permutation of all
    indices), so a shuffled order gives differently composed rows.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(order) != len(lengths):
        raise ValueError(f"order has {len(order)} entries for {len(lengths)} sequences")
    by_length = order[np.argsort(lengths[order], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(np.bincount(lengths, minlength=plan.sequence_length + 1))])
    next_unused = starts[:-1].copy()
    rows = np.full((plan.rows, plan.max_sequences_per_pack), -1, dtype=np.int64)
    row = 0
    for strategy, repeat in zip(plan.strategies, plan.repeats):
        for slot, length in enumerate(strategy):
            first = next_unused[length]
            if first + repeat > starts[length + 1]:
                raise ValueError(f"the packing plan needs more sequences of length {length} than the data contains")
            rows[row:row + repeat, slot] = by_length[first:first + repeat]
            next_unused[length] = first + repeat
        row += repeat
    return rows


def main(argv: list[str] | None = None) -> int:
    from pipelines.shards import ShardedSequences, read_metadata

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.packing",
        description=(
            "Report how well the sequences of prepared pre-training data pack into rows: efficiency is real "
            "tokens divided by row capacity, with and without packing."
        ),
    )
    parser.add_argument("data_dir", type=Path, help="prepared data folder (from python -m pipelines.pretraining_data)")
    parser.add_argument("--split", default="train", choices=("train", "validation"), help="split to report (default: train)")
    parser.add_argument(
        "--sequence-length", type=int, default=None,
        help="row length in tokens (default: the prepared sequence length)",
    )
    parser.add_argument(
        "--max-sequences-per-pack", type=int, nargs="+", default=[2, 3, 4],
        help="one or more limits of sequences per row to compare (default: 2 3 4)",
    )
    args = parser.parse_args(argv)

    try:
        info = read_metadata(args.data_dir)
        lengths = ShardedSequences(args.data_dir, args.split).lengths
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sequence_length = args.sequence_length or info.sequence_length
    if sequence_length < info.sequence_length:
        print(
            f"error: --sequence-length {sequence_length} is shorter than the prepared sequence length "
            f"{info.sequence_length}", file=sys.stderr,
        )
        return 2
    if len(lengths) == 0:
        print(f"error: the {args.split} split contains no sequences", file=sys.stderr)
        return 2
    quantiles = np.percentile(lengths, [10, 50, 90])
    print(f"{info.path} [{args.split}]: {len(lengths)} sequences, {int(lengths.sum())} real tokens")
    print(
        f"lengths: mean {lengths.mean():.1f}, p10 {quantiles[0]:.0f}, median {quantiles[1]:.0f}, "
        f"p90 {quantiles[2]:.0f}, max {lengths.max()}"
    )
    print(f"{'per row':>8} {'rows':>10} {'seq/row':>8} {'efficiency':>11}")
    print(f"{1:>8} {len(lengths):>10} {1.0:>8.2f} {padding_efficiency(lengths, sequence_length):>11.2%}")
    for limit in args.max_sequences_per_pack:
        plan = plan_packing(lengths, sequence_length, limit)
        print(f"{limit:>8} {plan.rows:>10} {plan.sequences / plan.rows:>8.2f} {plan.efficiency:>11.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
