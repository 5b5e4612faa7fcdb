"""Datasets: 2-D toys with exact log-densities, and validated loading of users' tables."""

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
    "Toy",
    "TwoSpirals",
    "get_toy",
    "list_toys",
]
