"""torch Datasets over the corpus: built in memory from a config, or read lazily from JSONL shards.

Both return items ``{"id", "task", "prompt": [segments], "target": [segments], "meta": {...}}``; pass ``tasks``
to keep a subset. ``collate_items`` keeps a batch as a list (segments are ragged; the processor tokenizes them).

Example:
    >>> from anygen.data.corpus import DataConfig
    >>> from anygen.data.dataset import SyntheticDataset
    >>> ds = SyntheticDataset(DataConfig(sizes={"text_to_image": 4}), split="train")
    >>> len(ds), ds[0]["task"]
    (4, 'text_to_image')
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from torch.utils.data import Dataset

from anygen.data.corpus import TASKS, DataConfig, Item, build_split
from anygen.data.shapes import check_split
from anygen.data.shards import decode_record, iter_records
from anygen.errors import InvalidArgumentError


def _check_tasks(tasks: Iterable[str] | None) -> set[str] | None:
    if tasks is None:
        return None
    tasks = set(tasks)
    unknown = sorted(tasks - set(TASKS))
    if unknown:
        raise InvalidArgumentError(f"tasks has unknown task(s) {unknown}; valid tasks: {list(TASKS)}")
    return tasks


class SyntheticDataset(Dataset):
    """The corpus of ``config`` for ``split``, generated in memory at construction (deterministic)."""

    def __init__(self, config: DataConfig | None = None, split: str = "train",
                 tasks: Iterable[str] | None = None) -> None:
        check_split(split)
        keep = _check_tasks(tasks)
        self.config = config or DataConfig()
        self.items = [i for i in build_split(self.config, split) if keep is None or i["task"] in keep]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]


class ShardedDataset(Dataset):
    """A corpus written by ``anygen data build``: records are indexed up front, media load on access."""

    def __init__(self, root: str | Path, split: str = "train", tasks: Iterable[str] | None = None) -> None:
        keep = _check_tasks(tasks)
        self.root = Path(root)
        self.records = [r for r in iter_records(self.root, split) if keep is None or r["task"] in keep]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Item:
        return decode_record(self.records[index], self.root)


def collate_items(batch: list[Item]) -> list[Item]:
    """DataLoader ``collate_fn`` that keeps items as they are."""
    return list(batch)
