"""Benchmark the pre-training data pipeline end to end.

Measures, in one run on this machine:

1. Wikipedia markup removal alone: MB of uncompressed XML dump per second.
2. Dump to shards (``prepare_pretraining_data``) with a given vocabulary: MB of
   uncompressed dump per second, end to end (reading, markup removal, sentence
   splitting, tokenisation, pair building, writing shards).
3. Plain text to shards: the same articles as text files, MB of text per second.
4. The first preparation, which also trains the vocabulary (the quick-start path).
5. The data loader: batches per second for unpacked and packed rows, next to the
   training steps per second of GroupBERT-tiny (2 layers, hidden 128) on the same
   batches, as the ratio loader speed / model speed. A ratio well above 1 means data
   loading does not limit a tiny model on CPU.

The default input is the English Wikipedia sample that ships with gensim (6.1 MB of
XML), so the benchmark runs offline. Pass ``--dump`` for another dump.

    python -m benchmarks.pipeline_throughput [--dump FILE] [--workers N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.dataloader import create_pretraining_dataloader
from pipelines.pretraining_data import prepare_pretraining_data
from pipelines.shards import read_metadata
from pipelines.sources import gensim_sample_path
from pipelines.wikipedia import ExtractionCounts, iter_articles, write_documents


def time_extraction(dump: Path, workers: int, output_dir: Path) -> dict:
    counts = ExtractionCounts()
    start = time.perf_counter()
    files = write_documents(iter_articles(dump, workers=workers, counts=counts), output_dir, max_file_bytes=64_000_000)
    seconds = time.perf_counter() - start
    text_bytes = sum(path.stat().st_size for path in files)
    return {
        "articles": counts.articles,
        "dump_mb": counts.dump_bytes / 1e6,
        "text_mb": text_bytes / 1e6,
        "seconds": seconds,
        "dump_mb_per_s": counts.dump_bytes / 1e6 / seconds,
    }


def time_prepare(inputs: list[str], output_dir: Path, vocab_file: str | None, workers: int, sequence_length: int) -> dict:
    start = time.perf_counter()
    path = prepare_pretraining_data(
        inputs, output_dir, vocab_file=vocab_file, vocab_size=30522, sequence_length=sequence_length,
        validation_fraction=0.01, seed=1, workers=workers,
    )
    seconds = time.perf_counter() - start
    info = read_metadata(path)
    raw_mb = info.metadata["input_counts"]["raw_bytes"] / 1e6
    return {
        "path": str(path),
        "raw_mb": raw_mb,
        "seconds": seconds,
        "raw_mb_per_s": raw_mb / seconds,
        "sequences": info.counts["train"]["sequences"] + info.counts["validation"]["sequences"],
        "vocab_size": info.vocab_size,
    }


def loader_settings(data_dir: str, packed: bool, batch_size: int, sequence_length: int) -> dict:
    return dict(
        data_dir_or_split=data_dir, micro_batch_size=batch_size, sequence_length=sequence_length, mask_tokens=20,
        packed_data=packed, max_sequences_per_pack=3, num_workers=0, seed=0, repeat=True,
    )


def time_loader(settings: dict, batches: int) -> float:
    iterator = iter(create_pretraining_dataloader(**settings))
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches / (time.perf_counter() - start)


def time_tiny_groupbert(vocab_size: int, loader_settings: dict, steps: int) -> float:
    """Training steps per second of GroupBERT-tiny (2 layers, hidden 128) on one real batch."""
    from ipu_groupbert.models import build_model, groupbert_config

    config = groupbert_config("tiny", vocab_size=vocab_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = build_model(config, "pretraining")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = next(iter(create_pretraining_dataloader(**loader_settings)))

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dump", type=Path, default=None, help="Wikipedia XML dump (default: gensim's sample)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="markup workers (default: CPU cores)")
    parser.add_argument("--sequence-length", type=int, default=128, help="sequence length (default: 128)")
    parser.add_argument("--batch-size", type=int, default=32, help="micro-batch size for the loader (default: 32)")
    parser.add_argument("--model-steps", type=int, default=5, help="timed GroupBERT-tiny steps (default: 5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    dump = args.dump or gensim_sample_path()
    torch.manual_seed(0)
    np.random.seed(0)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        results: dict = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
            "dump": str(dump),
            "workers": args.workers,
        }
        results["extraction"] = time_extraction(dump, args.workers, scratch / "text")
        results["first_prepare_with_vocab_training"] = time_prepare(
            [str(dump)], scratch / "trained", None, args.workers, args.sequence_length
        )
        vocab_file = str(Path(results["first_prepare_with_vocab_training"]["path"]) / "vocab.txt")
        results["dump_to_shards"] = time_prepare(
            [str(dump)], scratch / "dump_shards", vocab_file, args.workers, args.sequence_length
        )
        results["text_to_shards"] = time_prepare(
            [str(scratch / "text")], scratch / "text_shards", vocab_file, args.workers, args.sequence_length
        )
        data_dir = results["dump_to_shards"]["path"]
        vocab_size = results["dump_to_shards"]["vocab_size"]
        results["loader"] = {"batch_size": args.batch_size}
        for kind, packed in (("unpacked", False), ("packed", True)):
            settings = loader_settings(data_dir, packed, args.batch_size, args.sequence_length)
            loader_speed = time_loader(settings, 100)
            model_speed = time_tiny_groupbert(vocab_size, settings, args.model_steps)
            results["loader"][kind] = {
                "loader_batches_per_s": loader_speed,
                "groupbert_tiny_steps_per_s": model_speed,
                "ratio": loader_speed / model_speed,
            }

    extraction = results["extraction"]
    print(f"machine: {results['machine']}; input {dump.name}; {args.workers} markup workers")
    print("| stage | input MB | seconds | MB/s |")
    print("|---|---|---|---|")
    print(f"| markup removal only | {extraction['dump_mb']:.1f} | {extraction['seconds']:.1f} | {extraction['dump_mb_per_s']:.2f} |")
    for label, key in (
        ("dump to shards, given vocabulary", "dump_to_shards"),
        ("text to shards, given vocabulary", "text_to_shards"),
        ("dump to shards, training the vocabulary", "first_prepare_with_vocab_training"),
    ):
        entry = results[key]
        print(f"| {label} | {entry['raw_mb']:.1f} | {entry['seconds']:.1f} | {entry['raw_mb_per_s']:.2f} |")
    print(f"| rows, batch {args.batch_size} x {args.sequence_length} | loader batches/s (0 workers) | GroupBERT-tiny steps/s | ratio |")
    print("|---|---|---|---|")
    for kind in ("unpacked", "packed"):
        entry = results["loader"][kind]
        print(
            f"| {kind} | {entry['loader_batches_per_s']:.0f} | {entry['groupbert_tiny_steps_per_s']:.2f} | "
            f"{entry['ratio']:.0f}x |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
