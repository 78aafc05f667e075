"""Camera paths for rendering videos: generators, interpolation and a JSON file format.

Every pose here is an **OpenGL camera-to-world** matrix (camera looks down -z, +y up, +x right)
in **world coordinates** (the coordinates of the scene's ``transforms_*.json``), not in the unit
cube; the renderer maps them (rotation unchanged, translation * scale + offset). Functions accept
numpy arrays, torch tensors or nested lists; they compute in float64 and return torch float32.

Generators
----------
- :func:`look_at` ``(eye, target, up) -> [4, 4]``.
- :func:`orbit_path` ``(center, radius, height, n_frames, up)``: a circle of radius ``radius``
  (measured perpendicular to ``up``) at ``height`` above ``center`` along ``up``, every camera
  looking at ``center``; frame k at angle 2 pi k / n_frames (the last frame does not repeat the
  first, so the video loops).
- :func:`spiral_path`: the same circle turned ``n_turns`` times while the height goes
  ``height + height_amplitude * sin(2 pi k / n_frames)``.
- :func:`interpolate_path` ``(c2ws [K, 4, 4], n_frames)``: passes through the key poses (key i
  at frame ``round(i * (n_frames - 1) / (K - 1))``), positions on a Catmull-Rom spline,
  rotations by quaternion slerp between consecutive keys.
- :func:`default_path_params` derives centre, radius, height and up from training cameras:
  up = mean of the cameras' +y axes (normalised), height = mean height of the cameras above the
  centre along up, and the circle's radius sqrt(d^2 - height^2) with d the cameras' mean
  distance to the centre, so the orbit's cameras stand at that mean distance.

The camera-path file (nerfmine's format, written by :func:`write_camera_path`)
-------------------------------------------------------------------------------
::

    {
      "width": 800,            # image width in pixels (int > 0), required
      "height": 800,           # image height in pixels (int > 0), required
      "fps": 30,               # frames per second (> 0); optional, default 30
      "frames": [              # non-empty list, required
        {"c2w": [[r00, r01, r02, tx], [r10, r11, r12, ty], [r20, r21, r22, tz], [0, 0, 0, 1]],
         "fov_y": 39.6}        # vertical field of view in degrees, in (0, 180)
      ]
    }

``c2w`` is the 4x4 OpenGL camera-to-world matrix in world coordinates, as nested rows; its
upper-left 3x3 must be a rotation (rounding drift up to 1% and a uniform scale are corrected to
the nearest rotation, as the scene loaders do; shear or uneven scale beyond that is refused).
A frame may give ``"fx"`` (focal length in pixels, square pixels assumed) instead of ``"fov_y"``.

:func:`read_camera_path` also reads **nerfstudio's** camera-path JSON (as written by its
viewer): ``render_width``, ``render_height``, ``fps`` (or ``seconds``, then
fps = frames / seconds), ``camera_type`` (only ``perspective`` is supported) and
``camera_path``: a list of ``{"camera_to_world": 16 floats row-major (or 4x4), "fov": vertical
field of view in degrees, "aspect": width / height}``. Its poses are used as world coordinates
of the scene; nerfstudio's viewer works in its own (dataparser-transformed) frame, so a path made
for a nerfstudio-trained model may need that transform undone first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nerfmine.data.files import (
    ROTATION_HINT,
    MatrixError,
    finite_number,
    number_matrix,
    orthonormalised,
    rotation_problem,
)
from nerfmine.errors import NerfmineError
from nerfmine.json_files import read_json_file, shown

DEFAULT_FPS = 30.0


# --------------------------------------------------------------------------- small helpers
def _as_np(x, shape_tail: tuple[int, ...] | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if shape_tail is not None and arr.shape[-len(shape_tail):] != shape_tail:
        raise ValueError(f"expected shape [..., {', '.join(map(str, shape_tail))}], "
                         f"got {list(arr.shape)}")
    return arr


def _to_torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).float()


def _normalize(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-300)


def _look_at_np(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    forward = target - eye
    dist = np.linalg.norm(forward)
    if dist < 1e-12:
        raise NerfmineError(f"look_at: eye {eye.tolist()} and target {target.tolist()} coincide; "
                            "the camera must stand away from the point it looks at.")
    forward = forward / dist
    up_n = up / max(np.linalg.norm(up), 1e-300)
    right = np.cross(forward, up_n)
    if np.linalg.norm(right) < 1e-9:
        raise NerfmineError(f"look_at: the view direction {forward.tolist()} is parallel to up "
                            f"{up_n.tolist()}; choose another up vector.")
    right = right / np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0] = right
    c2w[:3, 1] = cam_up
    c2w[:3, 2] = -forward
    c2w[:3, 3] = eye
    return c2w


def _basis(up: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit up and two unit vectors e1, e2 with (e1, e2, up) right-handed."""
    up = up / np.linalg.norm(up)
    ref = np.eye(3)[int(np.argmin(np.abs(up)))]
    e1 = _normalize(ref - np.dot(ref, up) * up)
    e2 = np.cross(up, e1)
    return up, e1, e2


def _check_n(n_frames: int, minimum: int = 1) -> int:
    if isinstance(n_frames, bool) or int(n_frames) != n_frames or n_frames < minimum:
        raise NerfmineError(f"n_frames must be a whole number >= {minimum}, got {n_frames!r}.")
    return int(n_frames)


# --------------------------------------------------------------------------- generators
def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """OpenGL camera-to-world [4, 4] at ``eye`` whose -z axis points at ``target``, +y near up."""
    return _to_torch(_look_at_np(_as_np(eye, (3,)), _as_np(target, (3,)), _as_np(up, (3,))))


def _circle_poses(center, radius, heights, angles, up) -> np.ndarray:
    center = _as_np(center, (3,))
    up, e1, e2 = _basis(_as_np(up, (3,)))
    if not radius > 0:
        raise NerfmineError(f"radius must be > 0, got {radius!r}.")
    poses = []
    for h, a in zip(heights, angles):
        eye = center + h * up + radius * (math.cos(a) * e1 + math.sin(a) * e2)
        poses.append(_look_at_np(eye, center, up))
    return np.stack(poses)


def orbit_path(center, radius: float, height: float, n_frames: int,
               up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """[N, 4, 4] poses on a circle around ``up`` through ``center``, all looking at ``center``."""
    n = _check_n(n_frames)
    angles = 2.0 * math.pi * np.arange(n) / n
    return _to_torch(_circle_poses(center, float(radius), [float(height)] * n, angles, up))


def spiral_path(center, radius: float, height_amplitude: float, n_frames: int,
                n_turns: float = 2, height: float = 0.0, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """[N, 4, 4] poses turning ``n_turns`` times around ``up`` while rising and falling by
    ``height_amplitude`` around ``height``; all look at ``center``."""
    n = _check_n(n_frames)
    k = np.arange(n) / n
    angles = 2.0 * math.pi * n_turns * k
    heights = float(height) + float(height_amplitude) * np.sin(2.0 * math.pi * k)
    return _to_torch(_circle_poses(center, float(radius), heights, angles, up))


# --------------------------------------------------------------------------- quaternions
def rotation_to_quaternion(rot) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a 3x3 rotation matrix (Shepperd's method), float64."""
    m = _as_np(rot, (3, 3))
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2.0
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2.0
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2.0
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2.0
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    return q / np.linalg.norm(q)


def quaternion_to_rotation(q) -> np.ndarray:
    """3x3 rotation matrix (float64) of a quaternion (w, x, y, z); q is normalised first."""
    w, x, y, z = _normalize(_as_np(q, (4,)))
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def slerp(q0, q1, t: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions along the shorter arc."""
    q0, q1 = _normalize(_as_np(q0, (4,))), _normalize(_as_np(q1, (4,)))
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are the same rotation: take the shorter way round
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly equal: linear interpolation is exact enough and stable
        return _normalize(q0 + t * (q1 - q0))
    theta = math.acos(min(1.0, dot))
    s = math.sin(theta)
    return (math.sin((1.0 - t) * theta) * q0 + math.sin(t * theta) * q1) / s


def slerp_rotation(r0, r1, t: float) -> torch.Tensor:
    """Rotation [3, 3] a fraction ``t`` of the way from ``r0`` to ``r1`` (float32 tensor)."""
    q = slerp(rotation_to_quaternion(r0), rotation_to_quaternion(r1), t)
    return _to_torch(quaternion_to_rotation(q))


def _catmull_rom(p0, p1, p2, p3, t: float) -> np.ndarray:
    t2, t3 = t * t, t * t * t
    return 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                  + (-p0 + 3 * p1 - 3 * p2 + p3) * t3)


def key_frame_indices(n_keys: int, n_frames: int) -> list[int]:
    """Frame index at which :func:`interpolate_path` shows each key pose."""
    if n_keys == 1:
        return [0]
    return [int(round(i * (n_frames - 1) / (n_keys - 1))) for i in range(n_keys)]


def interpolate_path(c2ws, n_frames: int) -> torch.Tensor:
    """[n_frames, 4, 4] poses through the key poses ``c2ws`` [K, 4, 4], in order.

    Key i is shown exactly at frame ``key_frame_indices(K, n_frames)[i]`` when n_frames >= K.
    Positions follow a Catmull-Rom spline (end keys repeated), rotations a slerp between
    consecutive keys.
    """
    keys = _as_np(c2ws)
    if keys.ndim != 3 or keys.shape[1:] not in ((4, 4), (3, 4)):
        raise NerfmineError(f"interpolate_path: key poses must be [K, 4, 4], got "
                            f"{list(keys.shape)}.")
    n_keys = keys.shape[0]
    if n_keys == 0:
        raise NerfmineError("interpolate_path: no key poses given.")
    n = _check_n(n_frames)
    if n_keys == 1:
        pose = np.eye(4)
        pose[:3] = keys[0, :3]
        return _to_torch(np.repeat(pose[None], n, axis=0))
    pos = keys[:, :3, 3]
    quats = [rotation_to_quaternion(k[:3, :3]) for k in keys]
    if n >= n_keys:
        s_of_frame = np.interp(np.arange(n), key_frame_indices(n_keys, n), np.arange(n_keys))
    else:
        s_of_frame = np.arange(n) * (n_keys - 1) / max(n - 1, 1)
    out = np.zeros((n, 4, 4))
    out[:, 3, 3] = 1.0
    for f, s in enumerate(s_of_frame):
        i = min(int(math.floor(s)), n_keys - 2)
        t = float(s - i)
        p0 = pos[max(i - 1, 0)]
        p3 = pos[min(i + 2, n_keys - 1)]
        out[f, :3, 3] = _catmull_rom(p0, pos[i], pos[i + 1], p3, t)
        out[f, :3, :3] = quaternion_to_rotation(slerp(quats[i], quats[i + 1], t))
    return _to_torch(out)


# --------------------------------------------------------------------------- defaults
@dataclass
class PathParams:
    center: np.ndarray  # [3] world
    radius: float
    height: float
    up: np.ndarray  # [3] unit
    height_spread: float  # standard deviation of the cameras' heights


def default_path_params(c2ws, center=(0.0, 0.0, 0.0)) -> PathParams:
    """Orbit parameters from training poses [N, 4, 4] (world): see the module docstring."""
    poses = _as_np(c2ws)
    if poses.ndim != 3 or poses.shape[0] == 0:
        raise NerfmineError("no training cameras to derive a camera path from.")
    center = _as_np(center, (3,))
    up = poses[:, :3, 1].mean(axis=0)
    if np.linalg.norm(up) < 1e-9:
        up = np.array([0.0, 0.0, 1.0])
    up = up / np.linalg.norm(up)
    rel = poses[:, :3, 3] - center  # [N, 3]
    heights = rel @ up  # [N]
    horizontal = np.linalg.norm(rel - heights[:, None] * up, axis=-1)  # [N]
    distance = float(np.linalg.norm(rel, axis=-1).mean()) or 1.0
    height = float(heights.mean())
    # The circle keeps the cameras' mean distance to the centre at their mean height.
    radius = math.sqrt(distance**2 - height**2) if distance > abs(height) + 1e-9 else 0.0
    if radius <= 1e-6 * distance:
        radius = float(horizontal.mean()) or distance
    return PathParams(center=center, radius=radius, height=height, up=up,
                      height_spread=float(heights.std()))


def sort_by_azimuth(c2ws, center, up) -> np.ndarray:
    """Indices of poses [N, 4, 4] ordered by their angle around ``up`` through ``center``."""
    poses = _as_np(c2ws)
    up, e1, e2 = _basis(_as_np(up, (3,)))
    rel = poses[:, :3, 3] - _as_np(center, (3,))
    return np.argsort(np.arctan2(rel @ e2, rel @ e1), kind="stable")


# --------------------------------------------------------------------------- files
@dataclass
class CameraPath:
    """A camera path: poses [N, 4, 4] (world, OpenGL), vertical fov [N] in degrees, image size."""

    c2w: torch.Tensor  # [N, 4, 4] float32
    fov_y: torch.Tensor  # [N] float32, degrees
    width: int
    height: int
    fps: float = DEFAULT_FPS

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def focal(self, i: int) -> float:
        """Focal length in pixels of frame i (square pixels)."""
        return 0.5 * self.height / math.tan(math.radians(float(self.fov_y[i])) / 2.0)


def fov_to_focal(fov_y_degrees: float, height: int) -> float:
    return 0.5 * height / math.tan(math.radians(fov_y_degrees) / 2.0)


def focal_to_fov(focal: float, height: int) -> float:
    return math.degrees(2.0 * math.atan(0.5 * height / focal))


# The largest image side a camera path may ask for (JPEG's and many video encoders' limit).
MAX_SIDE = 65535


def _positive_int(value, where: str, key: str) -> int:
    v = finite_number(value)
    if v is None or v != int(v) or not 0 < v <= MAX_SIDE:
        raise NerfmineError(f"{where}: '{key}' must be a whole number of pixels from 1 to "
                            f"{MAX_SIDE}, got {shown(value)}.")
    return int(v)


def _fps(value, where: str, key: str = "fps") -> float:
    v = finite_number(value)
    if v is None or v <= 0:
        raise NerfmineError(f"{where}: '{key}' must be a number of frames per second > 0, "
                            f"got {shown(value)}; 30 is a common choice.")
    return v


def _fov(value, where: str) -> float:
    v = finite_number(value)
    # stored as float32: the bounds must hold there too (1e-50 would become 0 degrees)
    if v is None or not 0.0 < np.float32(v) < 180.0:
        raise NerfmineError(f"{where} must be a vertical field of view in degrees in (0, 180), "
                            f"got {shown(value)}.")
    return v


def _pose(value, where: str, allow_flat: bool) -> np.ndarray:
    flat = allow_flat and isinstance(value, list) and bool(value) \
        and not isinstance(value[0], list)
    try:
        m = number_matrix(value, (16,)).reshape(4, 4) if flat else number_matrix(value, (4, 4))
    except MatrixError as e:
        also = " (or 16 numbers, row-major)" if allow_flat else ""
        raise NerfmineError(f"{where} {e}; expected a 4x4 camera-to-world matrix of finite "
                            f"numbers{also}.") from None
    problem = rotation_problem(m)
    if problem:
        raise NerfmineError(f"{where} {problem}; {ROTATION_HINT}.")
    # Rounding drift and a uniform scale (which no ray sees) are corrected to the nearest
    # rotation, as the scene loaders do; quaternions of interpolated paths need a rotation.
    return orthonormalised(m)


def _require(obj: dict, key: str, where: str, what: str):
    if key not in obj:
        raise NerfmineError(f"{where}: missing key '{key}' ({what}).")
    return obj[key]


def read_camera_path(path: str | Path) -> CameraPath:
    """Read a camera path in nerfmine's or nerfstudio's JSON format (see the module docstring)."""
    path = Path(path)
    data = read_json_file(path, NerfmineError, "camera path file",
                          missing_hint="pass a JSON file, or one of orbit, spiral, interpolate")
    if not isinstance(data, dict):
        raise NerfmineError(f"{path}: expected a JSON object at the top level, got "
                            f"{type(data).__name__}.")
    if "frames" in data:
        return _read_nerfmine(data, path)
    if "camera_path" in data:
        return _read_nerfstudio(data, path)
    raise NerfmineError(f"{path}: missing key 'frames' (nerfmine's camera path format) or "
                        "'camera_path' (nerfstudio's); see nerfmine.camera_paths for the format.")


def _frames_list(value, path: Path, key: str) -> list:
    if not isinstance(value, list):
        raise NerfmineError(f"{path}: '{key}' must be a list of camera frames, got "
                            f"{type(value).__name__}.")
    if not value:
        raise NerfmineError(f"{path}: '{key}' is empty; a camera path needs at least one frame.")
    return value


def _read_nerfmine(data: dict, path: Path) -> CameraPath:
    width = _positive_int(_require(data, "width", str(path), "image width in pixels"),
                          str(path), "width")
    height = _positive_int(_require(data, "height", str(path), "image height in pixels"),
                           str(path), "height")
    fps = _fps(data.get("fps", DEFAULT_FPS), str(path))
    frames = _frames_list(data["frames"], path, "frames")
    poses, fovs = [], []
    for i, frame in enumerate(frames):
        where = f"{path}: frames[{i}]"
        if not isinstance(frame, dict):
            raise NerfmineError(f"{where} must be an object with 'c2w' and 'fov_y'.")
        poses.append(_pose(_require(frame, "c2w", where, "4x4 camera-to-world matrix"),
                           f"{where}.c2w", allow_flat=False))
        if "fov_y" in frame:
            fovs.append(_fov(frame["fov_y"], f"{where}.fov_y"))
        elif "fx" in frame:
            fx = finite_number(frame["fx"])
            if fx is None or fx <= 0:
                raise NerfmineError(f"{where}.fx must be a focal length in pixels > 0, "
                                    f"got {shown(frame['fx'])}.")
            fovs.append(_fov(focal_to_fov(fx, height),
                             f"{where}.fx ({fx:g} pixels for a height of {height}) gives a "
                             "field of view that"))
        else:
            raise NerfmineError(f"{where}: missing key 'fov_y' (vertical field of view in "
                                "degrees) or 'fx' (focal length in pixels).")
    return CameraPath(c2w=_to_torch(np.stack(poses)), fov_y=torch.tensor(fovs).float(),
                      width=width, height=height, fps=fps)


def _read_nerfstudio(data: dict, path: Path) -> CameraPath:
    where = str(path)
    width = _positive_int(_require(data, "render_width", where, "image width in pixels"),
                          where, "render_width")
    height = _positive_int(_require(data, "render_height", where, "image height in pixels"),
                           where, "render_height")
    camera_type = data.get("camera_type", "perspective")
    if str(camera_type).lower() != "perspective":
        raise NerfmineError(f"{path}: camera_type '{camera_type}' is not supported; nerfmine "
                            "renders perspective cameras only.")
    frames = _frames_list(data["camera_path"], path, "camera_path")
    if "fps" in data:
        fps = _fps(data["fps"], where)
    elif "seconds" in data:
        seconds = finite_number(data["seconds"])
        if seconds is None or seconds <= 0:
            raise NerfmineError(f"{path}: 'seconds' must be a duration > 0, got "
                                f"{shown(data['seconds'])}.")
        fps = _fps(len(frames) / seconds, where, "fps (frames / seconds)")
    else:
        raise NerfmineError(f"{path}: missing key 'fps' (frames per second) or 'seconds' "
                            "(the path's duration).")
    poses, fovs = [], []
    for i, frame in enumerate(frames):
        fwhere = f"{path}: camera_path[{i}]"
        if not isinstance(frame, dict):
            raise NerfmineError(f"{fwhere} must be an object with 'camera_to_world' and 'fov'.")
        poses.append(_pose(_require(frame, "camera_to_world", fwhere,
                                    "16 numbers, row-major 4x4 camera-to-world"),
                           f"{fwhere}.camera_to_world", allow_flat=True))
        fovs.append(_fov(_require(frame, "fov", fwhere, "vertical field of view in degrees"),
                         f"{fwhere}.fov"))
    return CameraPath(c2w=_to_torch(np.stack(poses)), fov_y=torch.tensor(fovs).float(),
                      width=width, height=height, fps=fps)


def write_camera_path(path: str | Path, camera_path: CameraPath) -> Path:
    """Write ``camera_path`` in nerfmine's format; :func:`read_camera_path` reads it back."""
    path = Path(path)
    c2w = _as_np(camera_path.c2w)
    fov = _as_np(camera_path.fov_y).reshape(-1)
    where = f"camera path for {path}"
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise NerfmineError(f"{where}: c2w must be [N, 4, 4], got {list(c2w.shape)}.")
    if c2w.shape[0] == 0:
        raise NerfmineError(f"{where}: 'frames' is empty; a camera path needs at least one frame.")
    if fov.shape[0] != c2w.shape[0]:
        raise NerfmineError(f"{where}: fov_y has {fov.shape[0]} values for {c2w.shape[0]} poses.")
    width = _positive_int(camera_path.width, where, "width")
    height = _positive_int(camera_path.height, where, "height")
    fps = _fps(camera_path.fps, where)
    frames = []
    for i in range(c2w.shape[0]):
        pose = _pose(c2w[i], f"{where}: frames[{i}].c2w", allow_flat=False)
        frames.append({"c2w": [[float(v) for v in row] for row in pose],
                       "fov_y": _fov(float(fov[i]), f"{where}: frames[{i}].fov_y")})
    doc = {"width": width, "height": height, "fps": fps, "frames": frames}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


__all__: Sequence[str] = (
    "CameraPath", "PathParams", "default_path_params", "focal_to_fov", "fov_to_focal",
    "interpolate_path", "key_frame_indices", "look_at", "orbit_path", "quaternion_to_rotation",
    "read_camera_path", "rotation_to_quaternion", "slerp", "slerp_rotation", "sort_by_azimuth",
    "spiral_path", "write_camera_path",
)
