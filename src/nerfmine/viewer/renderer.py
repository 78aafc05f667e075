"""What the viewer renders: browser cameras as nerfmine cameras, and a field that training
does not touch.

Cameras. viser reports a client's camera as a rotation ``wxyz`` and a ``position`` in world
coordinates with OpenCV axes (+z looks forward, +y points down, +x right) and a vertical field
of view in radians. nerfmine's poses are OpenGL camera-to-world matrices (+y up, looking down
-z) in the scene's world coordinates, so ``c2w[:3, :3] = R_viser @ diag(1, -1, -1)`` and
``c2w[:3, 3] = position`` (:func:`viser_to_c2w`); the renderer then maps world to the unit cube
(translation * scale + offset, recorded in the run's config).

Rendering during training. :class:`FieldRenderer` renders with its own copy of the field; the
training thread, in its progress hook (between two steps), hands it a *clone* of the EMA
weights and the occupancy bitfield (:meth:`FieldRenderer.publish`). The render thread copies
that snapshot into its field before its next frame. No lock is shared with the training step
except, on a GPU, the one of :meth:`FieldRenderer.share_lock`; no EMA swap happens (the
scene's ``ema_weights`` swaps in place and would race). On a GPU the clone is enqueued on the
training thread's stream without a host synchronisation (the render thread's stream waits for
it through an event).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nerfmine.cameras import Cameras
from nerfmine.render import render_rays
from nerfmine.scene import TrainedScene

# OpenCV camera axes (viser) to OpenGL camera axes (nerfmine): flip y and z.
CV_TO_GL = np.diag([1.0, -1.0, -1.0])


def quat_to_matrix(wxyz) -> np.ndarray:
    """Rotation matrix [3, 3] of a unit quaternion (w, x, y, z)."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(rot) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a rotation matrix [3, 3] (Shepperd's method)."""
    m = np.asarray(rot, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    return q / np.linalg.norm(q)


def viser_to_c2w(wxyz, position) -> np.ndarray:
    """OpenGL camera-to-world [4, 4] (world coordinates) of a viser camera (OpenCV axes)."""
    c2w = np.eye(4)
    c2w[:3, :3] = quat_to_matrix(wxyz) @ CV_TO_GL
    c2w[:3, 3] = np.asarray(position, dtype=np.float64)
    return c2w


def c2w_to_viser(c2w) -> tuple[np.ndarray, np.ndarray]:
    """(wxyz, position) of a viser camera or frustum for an OpenGL camera-to-world [4, 4]."""
    c2w = np.asarray(c2w, dtype=np.float64)
    return matrix_to_quat(c2w[:3, :3] @ CV_TO_GL), c2w[:3, 3].copy()


@dataclass(frozen=True)
class ViewCamera:
    """A camera to render: OpenGL camera-to-world [4, 4] in world coordinates, the vertical
    field of view in radians and the aspect ratio width / height."""

    c2w: np.ndarray
    fov_y: float
    aspect: float

    def cameras(self, width: int, height: int) -> Cameras:
        """This view as a pinhole camera of ``width`` x ``height`` pixels (world frame)."""
        c2w = torch.as_tensor(self.c2w, dtype=torch.float32)[None]  # [1, 4, 4]
        return Cameras.from_fov(c2w, self.fov_y, width, height)

    @classmethod
    def from_viser(cls, camera) -> ViewCamera:
        aspect = float(camera.aspect) if camera.image_height else 1.0
        return cls(viser_to_c2w(camera.wxyz, camera.position), float(camera.fov), aspect)

    def size(self, long_side: int) -> tuple[int, int]:
        """(width, height) with ``long_side`` pixels on the longer side."""
        long_side = max(1, int(long_side))
        if self.aspect >= 1.0:
            return long_side, max(1, round(long_side / self.aspect))
        return max(1, round(long_side * self.aspect)), long_side


class FieldRenderer:
    """Renders views of a snapshot of a scene's EMA weights and occupancy grid.

    It owns a copy of the field (made at construction), so its renders never read the weights
    that training updates. :meth:`publish` (training thread, between steps) hands over clones
    of the scene's current EMA weights and occupancy bitfield; :meth:`take_pending` (render
    thread) loads the latest one into the copy.
    """

    def __init__(self, scene: TrainedScene, background=(1.0, 1.0, 1.0),
                 rays_per_chunk: int | None = None, coarse_factor: float | None = None):
        self.device = scene.device
        self.field = scene.copy_field()  # no gradient buffers; the weights a render uses
        self.settings = scene.render_settings
        # Frames of a moving camera march with steps this many times longer (fewer network
        # evaluations; 4 on a CPU, 1 on a GPU); a still camera's frame uses the run's step.
        if coarse_factor is None:
            coarse_factor = 4.0 if self.device.type == "cpu" else 1.0
        self.coarse_settings = dataclasses.replace(
            self.settings, step_size=self.settings.step_size * coarse_factor,
            max_steps=max(1, math.ceil(self.settings.max_steps / coarse_factor)))
        if rays_per_chunk is None:  # small chunks on a CPU, so a moved camera aborts quickly
            rays_per_chunk = 4096 if self.device.type == "cpu" else 1 << 16
        self.rays_per_chunk = int(rays_per_chunk)
        self.scale = scene.scale
        self.offset = np.asarray(scene.offset, dtype=np.float64)
        self.world_center = scene.world_center()  # the unit cube's centre, world coordinates
        self.background = tuple(float(v) for v in background)
        self.bitfield = scene.occupancy.bitfield.clone()
        self.step = int(scene.step)
        self.version = 0
        self._lock = threading.Lock()  # guards only the hand-over of a snapshot
        # Held around every piece of device work of a render; share_lock gives it to the
        # training loop too (CUDA: no render work may be enqueued while a step is captured).
        self.device_lock: Any = contextlib.nullcontext()
        self._pending = None
        self.publish(scene)
        self.take_pending()

    def publish(self, scene: TrainedScene) -> None:
        """Offer the scene's current EMA weights and occupancy grid (clones, no sync)."""
        with torch.no_grad():
            ema = scene.ema_snapshot()
            bitfield = scene.occupancy.bitfield.clone()
        ready = None
        if bitfield.is_cuda:
            # The clones are enqueued on the training thread's stream (with CUDA graphs not
            # the default one): the render thread's stream waits for this event before it
            # reads them. No host synchronisation.
            ready = torch.cuda.Event()
            ready.record()
        with self._lock:
            self._pending = (ema, bitfield, int(scene.step), ready)

    def take_pending(self) -> bool:
        """Load the latest published snapshot, if any; True if the weights changed."""
        with self._lock:
            snapshot, self._pending = self._pending, None
        if snapshot is None:
            return False
        ema, bitfield, step, ready = snapshot
        with torch.no_grad(), self.device_lock:
            if ready is not None:
                stream = torch.cuda.current_stream(bitfield.device)
                stream.wait_event(ready)
                for tensor in [*ema, bitfield]:  # made on another stream, used on this one
                    tensor.record_stream(stream)
            for p, e in zip(self.field.parameters(), ema, strict=True):
                p.copy_(e)
            self.field.sync_table_fp16()  # the triton backend looks the table up in fp16
        self.bitfield, self.step = bitfield, step
        self.version += 1
        return True

    @torch.no_grad()
    def render(self, camera: ViewCamera, width: int, height: int, should_abort=None,
               coarse: bool = False) -> np.ndarray | None:
        """RGB uint8 [height, width, 3] of ``camera``; None if ``should_abort()`` turned true
        between two chunks of rays. ``coarse``: march with the longer steps of a moving
        camera."""
        settings = self.coarse_settings if coarse else self.settings
        with self.device_lock:
            cameras = camera.cameras(width, height).transformed(self.scale, self.offset)
            origins, directions = cameras.to(self.device).image_rays(0)  # [H*W, 3] each
            bg = torch.tensor(self.background, dtype=torch.float32, device=self.device)
        parts = []
        for start in range(0, origins.shape[0], self.rays_per_chunk):
            stop = start + self.rays_per_chunk
            with self.device_lock:
                rgb, _, _ = render_rays(self.field, self.bitfield, origins[start:stop],
                                        directions[start:stop],
                                        bg.expand(origins[start:stop].shape[0], 3), settings)
            parts.append(rgb)
            if should_abort is not None and should_abort():
                return None
        with self.device_lock:
            rgb = torch.cat(parts).view(height, width, 3).clamp(0, 1)
            return (rgb.cpu().numpy() * 255.0 + 0.5).astype(np.uint8)

    def share_lock(self) -> threading.Lock:
        """A lock that this renderer's device work takes from now on. Give it to the training
        loop (``Trainer.hooks.step_guard``) so that training steps and render chunks exclude
        each other.

        For CUDA training: a step may be captured as a CUDA graph (nerfmine.graphs), and work
        that another thread enqueues or a synchronisation it makes during a capture breaks it.
        An uncontended lock costs no device synchronisation, so the step stays free of host
        syncs. Not used on a CPU, where a render chunk takes long enough to stall training and
        there is nothing to capture.
        """
        lock = threading.Lock()
        self.device_lock = lock
        return lock
