"""Training points of an SDF fit and their ground-truth distances (numpy, on the host).

The mix (instant-ngp's ``generate_training_samples_sdf``), for n points:

- 4/8 on the surface, drawn area-weighted (a triangle with probability proportional to its
  area, then a uniform point in it); distance exactly 0;
- 3/8 on the surface and then moved by a logistic perturbation of scale s per axis
  (``logistic_scale``, sqrt(3)/2 / 1024 of the unit cube); distance from libigl;
- 1/8 uniform in the mesh's grown bounding box; distance from libigl.

Points come in that order: surface, perturbed, uniform (:func:`mix_counts`).

Why a pool: instant-ngp draws fresh points every step because its distances come from a GPU
BVH in microseconds. libigl's are computed on the CPU cores: about 30 thousand points per second
per slow core for a 100k-triangle mesh, against 2^18 points per GPU step of a few
milliseconds, so per-step distances would make the fit a thousand times slower. A pool of
``pool_size`` points (2^22 on a GPU, a few seconds to tens of seconds once per run) is drawn
once, and every step draws its B points from it uniformly with replacement; the pool is
regenerated identically (same seed) on resume, so nothing but the seed is stored.
"""

from __future__ import annotations

import numpy as np

from nerfmine.sdf.mesh import Mesh

DISTANCE_CHUNK = 2**16
"""Points per libigl call (bounds the temporaries libigl returns: closest points, indices)."""


def mix_counts(n: int) -> tuple[int, int, int]:
    """(surface, perturbed, uniform) counts of n points: 4/8, 3/8 and the rest (1/8 when
    8 divides n)."""
    surface, perturbed = n * 4 // 8, n * 3 // 8
    return surface, perturbed, n - surface - perturbed


def surface_points(mesh: Mesh, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points uniform on the surface (area-weighted triangles, uniform barycentrics). # [n, 3]"""
    area = mesh.triangle_areas()
    triangle = rng.choice(len(area), size=n, p=area / area.sum())  # [n]
    u, v = rng.random(n), rng.random(n)
    root = np.sqrt(u)
    w0, w1, w2 = 1.0 - root, root * (1.0 - v), root * v  # uniform in the triangle
    corners = mesh.vertices[mesh.faces[triangle]]  # [n, 3 corners, 3]
    return (w0[:, None] * corners[:, 0] + w1[:, None] * corners[:, 1]
            + w2[:, None] * corners[:, 2])


def uniform_points(mesh: Mesh, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points uniform in the mesh's grown bounding box (unit-cube coordinates). # [n, 3]"""
    return mesh.box_min + rng.random((n, 3)) * (mesh.box_max - mesh.box_min)


def training_points(mesh: Mesh, n: int, rng: np.random.Generator,
                    logistic_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """n training points [n, 3] float32 (unit cube) and their signed distances [n] float32, in
    the order surface, perturbed, uniform (:func:`mix_counts`)."""
    n_surface, n_perturbed, n_uniform = mix_counts(n)
    on_surface = surface_points(mesh, n_surface + n_perturbed, rng)
    perturbed = on_surface[n_surface:] + rng.logistic(0.0, logistic_scale, (n_perturbed, 3))
    uniform = uniform_points(mesh, n_uniform, rng)
    positions = np.concatenate([on_surface[:n_surface], perturbed, uniform]).astype(np.float32)
    distances = np.zeros(n, dtype=np.float32)
    queried = positions[n_surface:]
    distances[n_surface:] = np.concatenate(
        [mesh.signed_distance(queried[i:i + DISTANCE_CHUNK])
         for i in range(0, len(queried), DISTANCE_CHUNK)] or [np.zeros(0, np.float32)])
    return positions, distances
