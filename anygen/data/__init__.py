"""Synthetic training corpus: shape scenes (GenEval categories), edit pairs, digits, espeak-ng speech, melodies,
interleaved documents and text, deterministic from one seed, as torch Datasets or sharded JSONL plus media.

Example:
    >>> from anygen.data import DataConfig, SyntheticDataset
    >>> ds = SyntheticDataset(DataConfig(sizes={"edit": 2}), split="test")
    >>> ds[0]["task"]
    'edit'
"""

from __future__ import annotations

from anygen.data.corpus import TASKS, DataConfig, build_split, build_task
from anygen.data.dataset import ShardedDataset, SyntheticDataset, collate_items
from anygen.data.shapes import CATEGORIES, SPLITS
from anygen.data.shards import read_items, read_manifest, write_corpus

__all__ = ["CATEGORIES", "SPLITS", "TASKS", "DataConfig", "ShardedDataset", "SyntheticDataset", "build_split",
           "build_task", "collate_items", "read_items", "read_manifest", "write_corpus"]
