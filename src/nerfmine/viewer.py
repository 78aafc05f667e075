"""``nerfmine view``: a web viewer for a trained run, or for a run while it trains (``--view``).

The viewer is a viser server (``pip install 'nerfmine[view]'``). It serves a page on
``http://HOST:PORT`` (``127.0.0.1`` by default, so it is reachable from another machine only
through SSH port forwarding: ``ssh -N -L PORT:localhost:PORT user@host``). Every connected
browser gets renders from its own camera as the scene's background image, the training cameras
as frustums (at most :data:`MAX_FRUSTUMS`, evenly subsampled) and a panel with the run's step,
training clock, loss and PSNR.

Cameras. viser reports a client's camera as a rotation ``wxyz`` and a ``position`` in world
coordinates with OpenCV axes (+z looks forward, +y points down, +x right) and a vertical field
of view in radians. nerfmine's poses are OpenGL camera-to-world matrices (+y up, looking down
-z) in the scene's world coordinates, so ``c2w[:3, :3] = R_viser @ diag(1, -1, -1)`` and
``c2w[:3, 3] = position`` (:func:`viser_to_c2w`); the renderer then maps world to the unit cube
(translation * scale + offset, recorded in the run's config). The viewer's scene is in world
coordinates, with the training cameras' mean up vector as up.

Resolution. While a camera moves, frames are rendered small enough to take about
``target_seconds`` (measured pixel throughput; at least :data:`MIN_SIDE` pixels on the short
side); once it has been still for :data:`STILL_SECONDS`, the view is rendered again at
``max_res`` pixels on its long side. A render is done in chunks of rays and dropped as soon as
the camera moves again, so a slow CPU render never blocks the controls for long.

Rendering during training. The viewer never touches the weights that training updates. It
renders with its own copy of the field; the training thread, in its progress callback (between
two steps, about twice a second), hands it a *clone* of the EMA weights and the occupancy
bitfield at most every ``refresh_seconds`` and only while a browser is connected. The render
thread copies that snapshot into its field before its next frame. No lock is shared with the
training step, no EMA swap happens (``Trainer.ema_weights`` swaps in place and would race), and
with no browser connected the training loop does nothing extra. On a GPU the clone is
enqueued on the training thread's stream without a host synchronisation (the render thread's
stream waits for it through an event), and training steps
and render chunks take turns through a lock (:meth:`FieldRenderer.share_step_lock`), since a
step may be captured as a CUDA graph and work from another thread during a capture would break
it. Renders share the device (and on a CPU the cores) with training, so they slow the
training clock while a browser is moving the camera.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import io
import math
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nerfmine.errors import NerfmineError

DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"
MAX_FRUSTUMS = 64
MIN_SIDE = 32
STILL_SECONDS = 0.3
# OpenCV camera axes (viser) to OpenGL camera axes (nerfmine): flip y and z.
CV_TO_GL = np.diag([1.0, -1.0, -1.0])
INSTALL_HINT = "pip install 'nerfmine[view]'"


# --------------------------------------------------------------------------- checks
def import_viser():
    """The viser module, or a :class:`NerfmineError` saying how to install it."""
    try:
        import viser
    except ImportError:
        raise NerfmineError(f"the web viewer needs the viser package, which is not installed: "
                            f"{INSTALL_HINT}") from None
    return viser


def check_port(host: str, port: int) -> None:
    """Raise a :class:`NerfmineError` naming ``port`` if a server cannot listen on it."""
    if not 0 <= int(port) <= 65535:
        raise NerfmineError(f"--port must be between 1 and 65535, got {port}.")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the viewer's server does (asyncio's default on POSIX): a port in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise NerfmineError(
                    f"port {port} is already in use on {host} (another viewer or server?); "
                    f"choose a free one with --port, e.g. --port {int(port) + 1}.") from None
            if exc.errno == errno.EACCES:
                raise NerfmineError(f"no permission to listen on port {port} (ports below 1024 "
                                    "need root); choose another with --port.") from None
            raise NerfmineError(f"cannot listen on {host}:{port} ({exc.strerror}); check --host "
                                "and --port.") from None


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port that is free on ``host`` right now (for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- cameras
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


# --------------------------------------------------------------------------- rendering
class FieldRenderer:
    """Renders views of a snapshot of a trainer's EMA weights and occupancy grid.

    It owns a copy of the field (made at construction), so its renders never read the weights
    that training updates. :meth:`publish` (training thread, between steps) hands over clones
    of the current EMA weights and occupancy bitfield; :meth:`take_pending` (render thread)
    loads the latest one into the copy.
    """

    def __init__(self, trainer, background=(1.0, 1.0, 1.0), rays_per_chunk: int | None = None,
                 coarse_factor: float | None = None):
        self.device = trainer.device
        # The copy needs no gradient buffer of its own (the memo maps the sink to None).
        sink = getattr(trainer.field, "table_grad_sink", None)
        memo = {id(sink): None} if sink is not None else {}
        self.field = copy.deepcopy(trainer.field, memo)
        self.field.requires_grad_(False)
        self.settings = trainer.render_settings()
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
        self.scale = float(trainer.config.data.scale)
        self.offset = np.broadcast_to(np.asarray(trainer.config.data.offset, np.float64), (3,))
        self.background = tuple(float(v) for v in background)
        self.bitfield = trainer.occupancy.bitfield.clone()
        self.step = int(trainer.step)
        self.version = 0
        self._lock = threading.Lock()  # guards only the hand-over of a snapshot
        # Held around every piece of device work of a render; share_step_lock makes training
        # steps take it too (CUDA: no render work may be enqueued while a step is captured).
        self.device_lock: Any = contextlib.nullcontext()
        self._pending = None
        self.publish(trainer)
        self.take_pending()

    def publish(self, trainer) -> None:
        """Offer the trainer's current EMA weights and occupancy grid (clones, no sync)."""
        with torch.no_grad():
            ema = [e.detach().clone() for e in trainer.ema]
            bitfield = trainer.occupancy.bitfield.clone()
        ready = None
        if bitfield.is_cuda:
            # The clones are enqueued on the training thread's stream (with CUDA graphs not
            # the default one): the render thread's stream waits for this event before it
            # reads them. No host synchronisation.
            ready = torch.cuda.Event()
            ready.record()
        with self._lock:
            self._pending = (ema, bitfield, int(trainer.step), ready)

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
        from nerfmine.ops.rays import image_rays
        from nerfmine.render import render_rays

        c2w = torch.as_tensor(camera.c2w, dtype=torch.float64).clone()
        c2w[:3, 3] = c2w[:3, 3] * self.scale + torch.from_numpy(self.offset.copy())
        fy = 0.5 * height / math.tan(0.5 * camera.fov_y)
        with self.device_lock:
            c2w = c2w.float().to(self.device)
            origins, directions = image_rays(c2w, fy, fy, 0.5 * width, 0.5 * height, width,
                                             height)
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

    def share_step_lock(self, trainer) -> threading.Lock:
        """Make ``trainer``'s training steps and this renderer's device work exclude each other.

        For CUDA training: a step may be captured as a CUDA graph (nerfmine.graphs), and work
        that another thread enqueues or a synchronisation it makes during a capture breaks it.
        The step is wrapped on this trainer instance only; an uncontended lock costs no device
        synchronisation, so the step stays free of host syncs. Not used on a CPU, where a render
        chunk takes long enough to stall training and there is nothing to capture.
        """
        lock = threading.Lock()
        step = trainer.train_step

        def locked_step(*args, **kwargs):
            with lock:
                return step(*args, **kwargs)

        trainer.train_step = locked_step
        self.device_lock = lock
        return lock


# --------------------------------------------------------------------------- training cameras
@dataclass
class Cameras:
    """Training cameras in world coordinates: poses [N, 4, 4], vertical fov (rad), aspect."""

    c2w: np.ndarray
    fov_y: float
    aspect: float

    @classmethod
    def from_scene(cls, data) -> Cameras:
        return cls(data.c2w.double().numpy(), 2.0 * math.atan(0.5 * data.height / data.fy),
                   data.width / data.height)


def load_cameras(trainer) -> tuple[Cameras | None, str | None]:
    """The run's training cameras (without their images where possible), or a note why not."""
    if trainer.train_data is not None:
        return Cameras.from_scene(trainer.train_data), None
    d = trainer.config.data
    try:
        from nerfmine.render_cli import load_train_cameras

        cams = load_train_cameras(trainer.data_root, d.train_split, d.downscale,
                                  min_sharpness=d.min_sharpness)
        return Cameras(cams.c2w, math.radians(cams.fov_y), cams.width / cams.height), None
    except NerfmineError:
        pass  # not a NeRF-synthetic folder: read it through the capture loader
    try:
        from nerfmine.data.transforms import load_capture

        data = load_capture(trainer.data_root, d.train_split, d.downscale,
                            holdout_every=d.holdout_every, skip_missing=True,
                            min_sharpness=d.min_sharpness)
        return Cameras.from_scene(data), None
    except (NerfmineError, OSError) as exc:
        return None, (f"training cameras not shown: cannot read the scene at "
                      f"{trainer.data_root} ({exc}); pass --data if it moved")


# --------------------------------------------------------------------------- the server
@dataclass
class _ClientState:
    key: tuple | None = None
    moved_at: float = 0.0
    long_side: int = 0  # of the last frame sent for this camera (0: none yet)
    version: int = -1


def _fmt_time(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class Viewer:
    """A viser server showing a :class:`FieldRenderer`'s field to every connected browser.

    ``Viewer(renderer, cameras, ...).start()`` checks the port, starts the server and the
    render thread and returns; :meth:`stop` ends both. During training, pass every progress
    dict of :meth:`Trainer.train` to :meth:`on_progress` from the training thread.
    """

    def __init__(self, renderer: FieldRenderer, cameras: Cameras | None = None, *,
                 host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 max_res: int | None = None, target_seconds: float | None = None,
                 refresh_seconds: float = 1.0, title: str = "nerfmine", trainer=None):
        cpu = renderer.device.type == "cpu"
        self.renderer = renderer
        self.cameras = cameras
        self.host, self.port = host, int(port)
        self.max_res = int(max_res) if max_res else (128 if cpu else 1024)
        self.target_seconds = target_seconds or (0.25 if cpu else 0.05)
        self.refresh_seconds = float(refresh_seconds)
        self.title = title
        self.trainer = trainer
        self.frames_sent = 0
        self.last_frame: np.ndarray | None = None  # the last image sent to a browser
        self.pixels_per_second = 2.0e4 if cpu else 2.0e6  # refined by every render
        self.server = None
        self._states: dict[int, _ClientState] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_publish = 0.0
        self._progress: dict[str, Any] = {"step": renderer.step}
        self._status = None
        self._render_info = None
        self.errors: list[str] = []

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("127.0.0.1", "0.0.0.0", "::1", "::") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> Viewer:
        viser = import_viser()
        check_port(self.host, self.port)
        with contextlib.redirect_stdout(io.StringIO()):  # viser's own banner: we print ours
            server = viser.ViserServer(host=self.host, port=self.port, verbose=False)
        if server.get_port() != self.port:  # viser moves on to the next port when it is taken
            server.stop()
            raise NerfmineError(f"port {self.port} is already in use on {self.host}; choose a "
                                f"free one with --port, e.g. --port {self.port + 1}.")
        self.server = server
        try:
            self._setup_scene()
        except Exception:
            self.stop()
            raise
        server.on_client_connect(self._on_connect)
        server.on_client_disconnect(lambda client: self._states.pop(client.client_id, None))
        self._thread = threading.Thread(target=self._loop, name="nerfmine-viewer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
            self._thread = None
        if self.server is not None:
            server, self.server = self.server, None
            with contextlib.redirect_stdout(io.StringIO()):  # "(viser) Server stopped"
                server.stop()

    def __enter__(self) -> Viewer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def banner(self) -> str:
        return (f"viewer: open {self.url} in a browser (on another machine, forward the port "
                f"first: ssh -N -L {self.port}:localhost:{self.port} user@this-host)")

    # ------------------------------------------------------------------ scene and GUI
    def _setup_scene(self) -> None:
        from nerfmine import camera_paths as cp

        server = self.server
        center = (0.5 - self.renderer.offset) / self.renderer.scale  # unit cube centre, world
        up = np.array([0.0, 0.0, 1.0])
        eye = center + np.array([3.0, 3.0, 2.0]) / self.renderer.scale * 0.5
        fov = math.radians(50.0)
        if self.cameras is not None and len(self.cameras.c2w):
            params = cp.default_path_params(self.cameras.c2w, center)
            up = params.up
            # Behind the first training camera, so its frustum does not fill the view.
            eye = center + 1.25 * (self.cameras.c2w[0, :3, 3] - center)
            fov = self.cameras.fov_y
            distance = float(np.linalg.norm(self.cameras.c2w[:, :3, 3] - center, axis=-1).mean())
            idx = np.unique(np.round(np.linspace(0, len(self.cameras.c2w) - 1,
                                                 min(MAX_FRUSTUMS, len(self.cameras.c2w)))))
            for i in idx.astype(int):
                wxyz, pos = c2w_to_viser(self.cameras.c2w[i])
                server.scene.add_camera_frustum(
                    f"/training_cameras/{i:05d}", fov=self.cameras.fov_y,
                    aspect=self.cameras.aspect, scale=0.04 * distance, thickness=1.5,
                    thickness_units="screen", color=(40, 90, 200), wxyz=wxyz, position=pos)
        server.scene.set_up_direction(tuple(float(v) for v in up))
        server.initial_camera.up = tuple(float(v) for v in up)
        server.initial_camera.position = tuple(float(v) for v in eye)
        server.initial_camera.look_at = tuple(float(v) for v in center)
        server.initial_camera.fov = float(fov)
        with server.gui.add_folder(self.title):
            self._status = server.gui.add_markdown(self._status_text())
            self._render_info = server.gui.add_markdown("render: waiting for a browser")
            self._res_slider = server.gui.add_slider(
                "max resolution", min=MIN_SIDE, max=max(2048, self.max_res), step=32,
                initial_value=self.max_res)

        @self._res_slider.on_update
        def _(_event) -> None:
            self.max_res = int(self._res_slider.value)
            for state in list(self._states.values()):
                state.long_side = min(state.long_side, 1)  # refine again at the new size
            self._wake.set()

    def _status_text(self) -> str:
        p = self._progress
        lines = [f"**step** {p.get('step', '-')}"]
        if p.get("clock") is not None:
            lines.append(f"**training clock** {_fmt_time(p['clock'])}"
                         + (f", {_fmt_time(p['time_left'])} left"
                            if p.get("time_left") is not None else ""))
        if p.get("loss") is not None:
            lines.append(f"**loss** {p['loss']:.5f}")
        if p.get("psnr") is not None:
            lines.append(f"**PSNR** {p['psnr']:.2f} dB (last evaluation)")
        if p.get("state"):
            lines.append(f"**{p['state']}**")
        return "  \n".join(lines)

    def set_status(self, **values) -> None:
        """Update the panel (step, clock, time_left, loss, psnr, state)."""
        self._progress.update(values)
        if self._status is not None:
            self._status.content = self._status_text()

    def on_progress(self, info: dict[str, Any]) -> None:
        """A :meth:`Trainer.train` progress dict (training thread, between steps)."""
        try:
            if info.get("event") == "eval":
                self.set_status(psnr=info["psnr"], step=info["step"], clock=info["clock"])
            else:
                keys = ("step", "clock", "loss", "time_left", "psnr")
                self.set_status(**{k: info[k] for k in keys if info.get(k) is not None},
                                state="training done" if info.get("done") else "training")
            now = time.monotonic()
            due = now - self._last_publish >= self.refresh_seconds or info.get("done")
            if self.trainer is not None and due and self._states:
                self._last_publish = now
                self.renderer.publish(self.trainer)
                self._wake.set()
        except Exception as exc:  # noqa: BLE001 - the viewer must never stop a training run
            self.errors.append(f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ rendering loop
    def _on_connect(self, client) -> None:
        self._states.setdefault(client.client_id, _ClientState())
        client.camera.on_update(lambda _camera: self._wake.set())
        if self.trainer is not None:  # show the newest weights to a new browser
            self._last_publish = 0.0
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.05)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.renderer.take_pending()
                for client in list(self.server.get_clients().values()):
                    self._serve(client)
            except Exception as exc:  # noqa: BLE001 - keep serving; the panel says what broke
                self.errors.append(f"{type(exc).__name__}: {exc}")
                if self._render_info is not None:
                    self._render_info.content = f"render failed: {type(exc).__name__}: {exc}"
                time.sleep(0.5)

    @staticmethod
    def _camera_key(camera) -> tuple | None:
        if camera.update_timestamp == 0.0:
            return None  # no camera message from this browser yet
        return (tuple(np.round(camera.wxyz, 6)), tuple(np.round(camera.position, 6)),
                round(float(camera.fov), 6), camera.image_width, camera.image_height)

    def _serve(self, client) -> None:
        state = self._states.setdefault(client.client_id, _ClientState())
        camera = client.camera
        key = self._camera_key(camera)
        if key is None:
            return
        now = time.monotonic()
        if key != state.key:
            state.key, state.moved_at, state.long_side = key, now, 0
        view = ViewCamera.from_viser(camera)
        still = now - state.moved_at >= STILL_SECONDS
        if state.long_side == 0:
            still = False  # a first, quick frame for a new camera
        elif still and state.long_side < self.max_res:
            pass
        elif state.version == self.renderer.version:
            return  # the loop polls again shortly, to refine once the camera is still
        long_side = self.max_res if still else self._moving_side(view)
        width, height = view.size(long_side)
        t0 = time.perf_counter()
        image = self.renderer.render(view, width, height,
                                     should_abort=lambda: self._camera_key(camera) != key
                                     or self._stop.is_set(), coarse=not still)
        seconds = time.perf_counter() - t0
        if image is None:
            self._wake.set()
            return
        if not still:
            rate = width * height / max(seconds, 1e-4)
            self.pixels_per_second = 0.5 * self.pixels_per_second + 0.5 * rate
        client.scene.set_background_image(image, format="jpeg", jpeg_quality=90)
        state.long_side = long_side if still else min(long_side, self.max_res - 1)
        state.version = self.renderer.version
        self.frames_sent += 1
        self.last_frame = image
        if self._render_info is not None:
            self._render_info.content = (f"render: {width}x{height} in {seconds * 1000:.0f} ms "
                                         f"(weights of step {self.renderer.step})")
        self._wake.set()

    def _moving_side(self, view: ViewCamera) -> int:
        """Long side whose render takes about target_seconds at the measured throughput."""
        pixels = self.pixels_per_second * self.target_seconds
        long_side = math.sqrt(pixels * max(view.aspect, 1.0 / view.aspect))
        return int(min(self.max_res, max(MIN_SIDE, long_side)))


# --------------------------------------------------------------------------- the command
def add_parser(subparsers):
    """Add the ``view`` subcommand to ``subparsers`` (from ``parser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "view", help="web viewer for a trained run (viser; works over SSH port forwarding)",
        description="Serve a web page that renders a run's EMA weights from the browser's "
                    "camera and shows the training cameras. Needs viser: "
                    f"{INSTALL_HINT}.")
    p.add_argument("run_dir", type=Path, help="run folder holding checkpoint.pt")
    add_server_args(p, prefix="")
    p.add_argument("--max-res", type=int, default=None,
                   help="long side in pixels of a still view's render (default 128 on a CPU, "
                        "1024 on a GPU)")
    p.add_argument("--background", default="white",
                   help="white (default), black, or r,g,b with each value in [0, 1]")
    p.add_argument("--data", type=Path, default=None,
                   help="scene folder, if it moved since training (for the training cameras)")
    return p


def add_server_args(parser, prefix: str = "") -> None:
    """--port/--host (``view``) or --view-port/--view-host (``train --view``)."""
    parser.add_argument(f"--{prefix}port", type=int, default=DEFAULT_PORT,
                        help=f"viewer port (default {DEFAULT_PORT})")
    parser.add_argument(f"--{prefix}host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only, "
                             "reach it through SSH port forwarding; 0.0.0.0 opens it to the "
                             "network)")


def make_viewer(trainer, *, host: str, port: int, max_res: int | None = None,
                background=(1.0, 1.0, 1.0), training: bool = False) -> Viewer:
    """A :class:`Viewer` of ``trainer`` (not started); with ``training`` it follows the run."""
    renderer = FieldRenderer(trainer, background=background)
    if training and trainer.device.type == "cuda":
        renderer.share_step_lock(trainer)
    cameras, note = load_cameras(trainer)
    if note:
        print(f"note: {note}", flush=True)
    viewer = Viewer(renderer, cameras, host=host, port=port, max_res=max_res,
                    title=f"nerfmine: {trainer.run_dir.name}",
                    trainer=trainer if training else None)
    viewer.set_status(step=trainer.step, clock=trainer.clock,
                      psnr=trainer.history[-1].psnr if trainer.history else None,
                      state="training" if training else "trained run")
    return viewer


def wait_for_interrupt(viewer: Viewer) -> None:
    """Serve until Ctrl-C or SIGTERM (from the main thread)."""
    import signal

    previous = {}
    if threading.current_thread() is threading.main_thread():
        # SIGINT too: a process started in the background by a non-interactive shell inherits
        # SIGINT ignored, and Python then installs no KeyboardInterrupt handler of its own.
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, signal.default_int_handler)
    try:
        while viewer.server is not None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(args) -> int:
    """``nerfmine view RUN_DIR``; raises :class:`NerfmineError` for user mistakes."""
    from nerfmine.render_cli import load_run, parse_background

    import_viser()
    background = parse_background(args.background)
    check_port(args.host, args.port)
    if args.max_res is not None and args.max_res < MIN_SIDE:
        raise NerfmineError(f"--max-res must be at least {MIN_SIDE} pixels, got {args.max_res}.")
    trainer = load_run(args.run_dir, args.data)
    viewer = make_viewer(trainer, host=args.host, port=args.port, max_res=args.max_res,
                         background=background)
    viewer.start()
    try:
        print(f"viewing {args.run_dir} (step {trainer.step}) on {trainer.device}", flush=True)
        print(viewer.banner(), flush=True)
        print("Ctrl-C stops the viewer", flush=True)
        wait_for_interrupt(viewer)
    finally:
        viewer.stop()
    print("viewer stopped", flush=True)
    return 0
