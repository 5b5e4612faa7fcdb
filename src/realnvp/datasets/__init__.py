"""Datasets: 2-D toys with exact log-densities, and validated reading of users' tables.

The table functions live in :mod:`realnvp.datasets.files` and are imported on first use,
so that working with the toys does not load pandas.

Example:
    >>> from realnvp.datasets import get_toy, load_table
    >>> get_toy("rings").sample(3, seed=0)[0].shape
    torch.Size([3, 2])
"""

from __future__ import annotations

import importlib
from typing import Any

from realnvp.datasets.toys import (
    TOYS,
    Bounds,
    Checkerboard,
    Circles,
    EightGaussians,
    Moons,
    Pinwheel,
    Rings,
    SwissRoll,
    Toy,
    TwoSpirals,
    get_toy,
    list_toys,
)

__all__ = [
    "TOYS",
    "Bounds",
    "Checkerboard",
    "Circles",
    "EightGaussians",
    "Moons",
    "Pinwheel",
    "Rings",
    "SwissRoll",
    "Table",
    "TableError",
    "Toy",
    "TwoSpirals",
    "get_toy",
    "iter_table_chunks",
    "list_toys",
    "load_table",
    "save_table",
]

_FILES = {"Table", "TableError", "iter_table_chunks", "load_table", "save_table"}


def __getattr__(name: str) -> Any:
    if name in _FILES:
        return getattr(importlib.import_module("realnvp.datasets.files"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
