"""Geometry of a multiresolution hash grid (tiny-cuda-nn's "HashGrid"): levels, resolutions,
table sizes and offsets. Shared by the reference encoding (:mod:`nerfmine.ops.hash_grid`), its
Triton kernel and the field."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

# tiny-cuda-nn's coherent prime hash (one prime per dimension; the first is 1). A d-dimensional
# grid uses the first d: (1, 2654435761) for an image, as instant-ngp.
HASH_PRIMES = (1, 2654435761, 805459861)
DIMENSIONS = (2, 3)  # images and volumes


@dataclass(frozen=True)
class HashGridSpec:
    """Geometry of a 2-D or 3-D multiresolution hash grid (tiny-cuda-nn "HashGrid").

    Defaults are instant-ngp's NeRF setting for a synthetic scene (aabb_scale 1): 3-D, 16 levels
    of 2 features, 2^19 entries per level, resolutions 16 to 2048. ``n_dims=2`` is the image
    primitive's grid (bilinear, d = 2 in every res^d below).
    """

    n_levels: int = 16
    n_features: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 2048
    n_dims: int = 3

    def __post_init__(self) -> None:
        if self.n_dims not in DIMENSIONS:
            raise ValueError(f"n_dims must be 2 or 3, got {self.n_dims}")

    @property
    def n_corners(self) -> int:
        """2^d corners per cell (8 for 3-D, 4 for 2-D)."""
        return 1 << self.n_dims

    @property
    def table_size(self) -> int:
        """T: the most entries a level may have."""
        return 1 << self.log2_table_size

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.n_features

    @property
    def log2_per_level_scale(self) -> float:
        if self.n_levels == 1:
            return 0.0
        return math.log2(self.max_resolution / self.base_resolution) / (self.n_levels - 1)

    @cached_property
    def scales(self) -> tuple[float, ...]:
        """s_l = Nmin * b^l - 1 (tcnn's grid_scale); positions map as x * s_l + 0.5."""
        return tuple(
            math.exp2(level * self.log2_per_level_scale) * self.base_resolution - 1.0
            for level in range(self.n_levels)
        )

    @cached_property
    def resolutions(self) -> tuple[int, ...]:
        """Grid vertices per axis: ceil(s_l) + 1."""
        return tuple(int(math.ceil(s)) + 1 for s in self.scales)

    @cached_property
    def level_sizes(self) -> tuple[int, ...]:
        """Entries of each level: res^d rounded up to a multiple of 8, at most T."""
        sizes = []
        for res in self.resolutions:
            dense = min(res**self.n_dims, (1 << 32) // 2 - 1)
            dense = (dense + 7) // 8 * 8
            sizes.append(min(dense, self.table_size))
        return tuple(sizes)

    @cached_property
    def dense_levels(self) -> tuple[bool, ...]:
        """True where a level is indexed densely (res^d fits in the level's table)."""
        return tuple(res**self.n_dims <= size
                     for res, size in zip(self.resolutions, self.level_sizes))

    @cached_property
    def level_offsets(self) -> tuple[int, ...]:
        """Row offset of each level in the flat table; the last entry is the total row count."""
        offsets = [0]
        for size in self.level_sizes:
            offsets.append(offsets[-1] + size)
        return tuple(offsets)

    @property
    def n_entries(self) -> int:
        """Rows of the flat parameter table (shape [n_entries, n_features])."""
        return self.level_offsets[-1]
