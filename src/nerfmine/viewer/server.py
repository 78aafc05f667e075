"""The viewer's server: a viser page per browser, renders of its camera, the run's panel.

:class:`Viewer` serves a page on ``http://HOST:PORT`` (``127.0.0.1`` by default, so it is
reachable from another machine only through SSH port forwarding: ``ssh -N -L PORT:localhost:
PORT user@host``). Every connected browser gets renders from its own camera as the scene's
background image, the training cameras as frustums (at most :data:`MAX_FRUSTUMS`, evenly
subsampled) and a panel with the run's step, training clock, loss and PSNR, and the last
render's size and time with the frames per second sent to browsers.

Resolution. While a camera moves, frames are rendered small enough to take about
``target_seconds`` (measured pixel throughput; at least :data:`MIN_SIDE` pixels on the short
side); once it has been still for :data:`STILL_SECONDS`, the view is rendered again at
``max_res`` pixels on its long side. A render is done in chunks of rays and dropped as soon as
the camera moves again, so a slow CPU render never blocks the controls for long. Renders share
the device (and on a CPU the cores) with training, so they slow the training clock while a
browser is moving the camera.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import math
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from nerfmine.cameras import Cameras
from nerfmine.errors import NerfmineError
from nerfmine.scene import TrainedScene
from nerfmine.viewer.renderer import FieldRenderer, ViewCamera, c2w_to_viser

DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"
MAX_FRUSTUMS = 64
MIN_SIDE = 32
STILL_SECONDS = 0.3
INSTALL_HINT = "pip install 'nerfmine[view]'"


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


@dataclass
class _ClientState:
    key: tuple | None = None
    moved_at: float = 0.0
    long_side: int = 0  # of the last frame sent for this camera (0: none yet)
    version: int = -1


class FrameRate:
    """Frames per second over the last ``window`` seconds of frames sent to browsers: what a
    user sees, including the time between renders (the panel shows it beside the render time,
    whose inverse is the rate the renderer alone would allow)."""

    def __init__(self, window: float = 2.0):
        self.window = float(window)
        self._times: collections.deque[float] = collections.deque()

    def add(self, now: float) -> None:
        self._times.append(now)
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()

    def rate(self, now: float) -> float | None:
        """Frames per second over the window up to ``now``; None before two frames in it."""
        times = [t for t in self._times if now - t <= self.window]
        if len(times) < 2:
            return None
        return (len(times) - 1) / max(times[-1] - times[0], 1e-6)


def _fmt_time(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class Viewer:
    """A viser server showing a :class:`FieldRenderer`'s field to every connected browser.

    ``Viewer(renderer, cameras, ...).start()`` checks the port, starts the server and the
    render thread and returns; :meth:`stop` ends both. During training, give it the training
    run's live ``scene`` and add :meth:`on_progress` to the trainer's progress hooks: it then
    publishes the scene's EMA weights to the renderer (at most every ``refresh_seconds``, only
    while a browser is connected).
    """

    def __init__(self, renderer: FieldRenderer, cameras: Cameras | None = None, *,
                 host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 max_res: int | None = None, target_seconds: float | None = None,
                 refresh_seconds: float = 1.0, title: str = "nerfmine",
                 scene: TrainedScene | None = None):
        cpu = renderer.device.type == "cpu"
        self.renderer = renderer
        self.cameras = cameras
        self.host, self.port = host, int(port)
        self.max_res = int(max_res) if max_res else (128 if cpu else 1024)
        self.target_seconds = target_seconds or (0.25 if cpu else 0.05)
        self.refresh_seconds = float(refresh_seconds)
        self.title = title
        self.scene = scene  # the training run's live scene (None: a trained run)
        self.frames_sent = 0
        self.frame_rate = FrameRate()
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
        center = self.renderer.world_center
        up = np.array([0.0, 0.0, 1.0])
        eye = center + np.array([3.0, 3.0, 2.0]) / self.renderer.scale * 0.5
        fov = math.radians(50.0)
        if self.cameras is not None and len(self.cameras):
            poses = self.cameras.c2w.double().cpu().numpy()  # [N, 4, 4] world
            params = cp.default_path_params(poses, center)
            up = params.up
            # Behind the first training camera, so its frustum does not fill the view.
            eye = center + 1.25 * (poses[0, :3, 3] - center)
            fov = self.cameras.fov_y(0)
            distance = float(np.linalg.norm(poses[:, :3, 3] - center, axis=-1).mean())
            idx = np.unique(np.round(np.linspace(0, len(poses) - 1,
                                                 min(MAX_FRUSTUMS, len(poses)))))
            for i in idx.astype(int):
                wxyz, pos = c2w_to_viser(poses[i])
                server.scene.add_camera_frustum(
                    f"/training_cameras/{i:05d}", fov=fov,
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
        """A training progress dict (``Trainer.hooks.progress``: the training thread, between
        two steps)."""
        try:
            if info.get("event") == "eval_progress":
                self.set_status(state=f"evaluating {info['done']}/{info['total']}")
                return
            if info.get("event") == "eval":
                self.set_status(psnr=info["psnr"], step=info["step"], clock=info["clock"])
            else:
                keys = ("step", "clock", "loss", "time_left", "psnr")
                self.set_status(**{k: info[k] for k in keys if info.get(k) is not None},
                                state="training done" if info.get("done") else "training")
            now = time.monotonic()
            due = now - self._last_publish >= self.refresh_seconds or info.get("done")
            if self.scene is not None and due and self._states:
                self._last_publish = now
                self.renderer.publish(self.scene)
                self._wake.set()
        except Exception as exc:  # noqa: BLE001 - the viewer must never stop a training run
            self.errors.append(f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ rendering loop
    def _on_connect(self, client) -> None:
        self._states.setdefault(client.client_id, _ClientState())
        client.camera.on_update(lambda _camera: self._wake.set())
        if self.scene is not None:  # show the newest weights to a new browser
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
        sent_at = time.monotonic()
        self.frame_rate.add(sent_at)
        if self._render_info is not None:
            self._render_info.content = render_info(width, height, seconds,
                                                    self.frame_rate.rate(sent_at),
                                                    self.renderer.step)
        self._wake.set()

    def _moving_side(self, view: ViewCamera) -> int:
        """Long side whose render takes about target_seconds at the measured throughput."""
        pixels = self.pixels_per_second * self.target_seconds
        long_side = math.sqrt(pixels * max(view.aspect, 1.0 / view.aspect))
        return int(min(self.max_res, max(MIN_SIDE, long_side)))



def render_info(width: int, height: int, seconds: float, fps: float | None, step: int) -> str:
    """The panel's render line: the last frame's size and render time, the frames per second
    sent to browsers over the last seconds (while the camera moves or the weights change), and
    the weights' step."""
    rate = f", {fps:.1f} frames/s" if fps is not None else ""
    return (f"render: {width}x{height} in {seconds * 1000:.0f} ms{rate} "
            f"(weights of step {step})")


def load_cameras(scene: TrainedScene) -> tuple[Cameras | None, str | None]:
    """The run's training cameras (read without their images), or a note why not."""
    try:
        data = scene.load_split(scene.config.data.train_split, decode=False, skip_missing=True)
        return data.cameras(), None
    except (NerfmineError, OSError) as exc:
        return None, (f"training cameras not shown: cannot read the scene at "
                      f"{scene.data_root} ({exc}); pass --data if it moved")


def make_viewer(scene: TrainedScene, *, host: str, port: int, max_res: int | None = None,
                background=(1.0, 1.0, 1.0), training: bool = False,
                cameras: Cameras | None = None, title: str = "nerfmine") -> Viewer:
    """A :class:`Viewer` of ``scene`` (not started). With ``training`` it follows the scene as
    it trains: add the viewer's :meth:`Viewer.on_progress` to the trainer's progress hooks, and
    on a GPU the renderer's :meth:`FieldRenderer.share_lock` to its step guard. ``cameras``
    (world frame) are shown as frustums; by default they are read from the run's scene."""
    renderer = FieldRenderer(scene, background=background)
    if cameras is None:
        cameras, note = load_cameras(scene)
        if note:
            print(f"note: {note}", flush=True)
    viewer = Viewer(renderer, cameras, host=host, port=port, max_res=max_res, title=title,
                    scene=scene if training else None)
    viewer.set_status(step=scene.step, clock=scene.clock,
                      psnr=scene.history[-1].psnr if scene.history else None,
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

