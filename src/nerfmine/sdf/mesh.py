"""The mesh to fit: reading it (OBJ, PLY, STL, OFF, GLB, ... through trimesh), placing it in the
unit cube, and its ground truth (signed distances and inside/outside) through libigl.

Placement (instant-ngp's ``load_mesh``): the mesh's bounding box grows by ``padding`` (0.5 %) of
its diagonal on every side; the grown box is scaled so that its longest side is 1 and centred at
(0.5, 0.5, 0.5). Uniform training points and IoU points lie in that grown box (in unit-cube
coordinates), so along the longest axis it is exactly [0, 1].

Ground truth, libigl (``pip install 'nerfmine[sdf]'``): ``igl.signed_distance`` with the sign
of the *fast winding number* (Barill et al. 2018) and ``igl.fast_winding_number`` for the signs
alone. Why libigl: a maintained, widely used geometry library with wheels for every platform
(a few MB), multithreaded distance queries on an AABB tree, and winding-number signs that stay
meaningful on meshes with small holes or self-intersections (inside where the winding number
exceeds 1/2), where pseudonormal signs and ray parity break. open3d's
RaycastingScene.compute_signed_distance is as fast but a ~400 MB dependency whose sign needs a
watertight mesh; trimesh's own ``proximity.signed_distance`` is pure Python and needs rtree or
embree, orders of magnitude slower. A mesh that is not watertight is therefore accepted with a
warning (its inside is what the winding number says).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerfmine.errors import DataError

INSTALL_HINT = "pip install 'nerfmine[sdf]'"


def require_igl():
    """The ``igl`` module (libigl's bindings), or a :class:`DataError` naming the extra."""
    try:
        import igl
    except ImportError:
        raise DataError(f"the SDF primitive computes ground-truth distances with libigl, which "
                        f"is not installed; run: {INSTALL_HINT}") from None
    return igl


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh placed in the unit cube. ``vertices`` are unit-cube coordinates."""

    path: Path
    vertices: np.ndarray  # [V, 3] float64, unit-cube coordinates
    faces: np.ndarray  # [F, 3] int64
    center: np.ndarray  # [3] float64: the grown box's centre in the file's coordinates
    scale: float  # the grown box's longest side in the file's coordinates
    box_min: np.ndarray  # [3] float64: the grown box in unit-cube coordinates
    box_max: np.ndarray  # [3] float64
    watertight: bool

    def to_file_coordinates(self, unit: np.ndarray) -> np.ndarray:
        """Unit-cube points [N, 3] -> the file's coordinates."""
        return (np.asarray(unit, dtype=np.float64) - 0.5) * self.scale + self.center

    def triangle_areas(self) -> np.ndarray:
        a, b, c = (self.vertices[self.faces[:, k]] for k in range(3))
        return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)  # [F]

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """Signed distance [N] float32 of unit-cube points [N, 3], negative inside (libigl,
        fast-winding-number sign)."""
        igl = require_igl()
        if len(points) == 0:
            return np.zeros(0, dtype=np.float32)
        distance, *_ = igl.signed_distance(
            np.ascontiguousarray(points, dtype=np.float64), self.vertices, self.faces,
            igl.SignedDistanceType.SIGNED_DISTANCE_TYPE_FAST_WINDING_NUMBER)
        return distance.astype(np.float32)

    def inside(self, points: np.ndarray) -> np.ndarray:
        """Whether unit-cube points [N, 3] lie inside: winding number > 1/2. # [N] bool"""
        igl = require_igl()
        if len(points) == 0:
            return np.zeros(0, dtype=bool)
        winding = igl.fast_winding_number(self.vertices, self.faces,
                                          np.ascontiguousarray(points, dtype=np.float64))
        return winding > 0.5


def read_mesh(path: Path, padding: float = 0.005) -> Mesh:
    """The triangle mesh at ``path``, placed in the unit cube; a :class:`DataError` naming the
    file if it cannot be read or holds no surface. Warns when it is not watertight."""
    path = Path(path)
    if not path.is_file():
        what = "a folder, not a mesh file" if path.is_dir() else "no such file"
        raise DataError(f"{path}: {what}; pass the path of a triangle mesh (OBJ, PLY, STL)")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); pass an intact mesh file")
    try:
        import trimesh
    except ImportError:
        raise DataError(f"reading meshes needs trimesh, which is not installed; run: "
                        f"{INSTALL_HINT}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = trimesh.load(str(path), force="mesh")
    except Exception as exc:  # noqa: BLE001 - every reader failure is the file's problem
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a mesh trimesh can read ({first}); pass a triangle "
                        "mesh in OBJ, PLY or STL") from None
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), dtype=np.int64)
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), dtype=np.float64)
    if faces.ndim != 2 or faces.shape[0] == 0 or vertices.shape[0] == 0:
        raise DataError(f"{path}: the file holds no triangles ({len(vertices)} vertices, "
                        f"{len(faces)} faces); pass a triangle mesh, not a point cloud or an "
                        "empty file")
    if not np.isfinite(vertices).all():
        raise DataError(f"{path}: the mesh has NaN or infinite vertex coordinates; fix it")
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    pad = padding * float(np.linalg.norm(hi - lo))
    lo, hi = lo - pad, hi + pad
    scale = float((hi - lo).max())
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum()
    if not scale > 0 or not area > 0:
        raise DataError(f"{path}: the mesh has no area (all its triangles are degenerate); "
                        "pass a mesh with a surface")
    center = 0.5 * (lo + hi)
    watertight = bool(loaded.is_watertight)
    if not watertight:
        warnings.warn(f"{path}: the mesh is not watertight; its inside is taken from the "
                      "winding number (> 1/2), which copes with small holes, but the IoU and "
                      "the fitted surface are only as meaningful as that inside", stacklevel=2)
    unit = (vertices - center) / scale + 0.5
    return Mesh(path=path, vertices=np.ascontiguousarray(unit), faces=np.ascontiguousarray(faces),
                center=center, scale=scale, box_min=(lo - center) / scale + 0.5,
                box_max=(hi - center) / scale + 0.5, watertight=watertight)
