"""A trained scene: what rendering, exporting, evaluating and viewing a run need, and no more.

:class:`TrainedScene` holds the radiance field (with its EMA weights), the occupancy grid, the
scene's box and world-to-unit-cube transform, and the render settings of the run's config. It
is what ``nerfmine eval``, ``render``, ``export`` and ``view`` load from a run folder
(:meth:`TrainedScene.load`), as nerfstudio's ``eval_setup`` returns a pipeline rather than a
trainer: no optimizer, miner or CUDA graphs are built to look at a trained field.

During training the :class:`~nerfmine.trainer.Trainer` owns a TrainedScene whose field holds the
training weights and whose ``ema`` list the EMA weights; :meth:`TrainedScene.ema_weights` swaps
those in for a render. A scene loaded from a run holds the EMA weights in the field itself
(``ema`` is None).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from nerfmine.cameras import Cameras
from nerfmine.checkpoint import CHECKPOINT_NAME, load_run_checkpoint, save_checkpoint
from nerfmine.config import RunConfig, config_from_dict, merge_overrides, resolve_for_scene
from nerfmine.errors import ConfigError
from nerfmine.field import NGPField
from nerfmine.metrics import EvalResult
from nerfmine.occupancy import OccupancyGrid
from nerfmine.render import RenderSettings, render_image, render_rays

WHITE = (1.0, 1.0, 1.0)


class TrainedScene:
    """A radiance field ready to render, with its occupancy grid and the scene's geometry.

    ``config`` is a resolved run config (scene box, cascades and cone angle filled in:
    :func:`nerfmine.config.resolve_for_scene`). ``step``, ``clock`` and ``history`` say how far
    the field was trained (steps, seconds of training clock, the evaluations so far).
    """

    def __init__(self, config: RunConfig, field: NGPField, occupancy: OccupancyGrid,
                 ema: list[torch.Tensor] | None = None, *, step: int = 0, clock: float = 0.0,
                 history: list | None = None):
        self.config = config
        self.field = field
        self.occupancy = occupancy
        self.ema = ema
        self.step = int(step)
        self.clock = float(clock)
        self.history: list = list(history or [])

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, config: RunConfig, with_ema: bool = False) -> TrainedScene:
        """A fresh, untrained scene of a resolved ``config`` on its device: the field drawn
        from the run's seed, every occupancy cell occupied. ``with_ema`` keeps a separate copy
        of the weights for their moving average (a training run's)."""
        device = torch.device(config.device)
        aabb_scale = float(config.data.aabb_scale if config.data.aabb_scale is not None else 1)
        field = NGPField(config.model, backend=config.backend, seed=config.train.seed,
                         aabb_scale=aabb_scale).to(device)
        field.fused_inference = config.train.fused_inference_mlp  # under fp16 autocast only
        if config.backend == "triton":
            field.keep_table_fp16()  # the kernels look the table up in fp16
        occupancy = OccupancyGrid(config.occupancy, aabb_scale=aabb_scale).to(device)
        ema = [p.detach().clone() for p in field.parameters()] if with_ema else None
        return cls(config, field, occupancy, ema)

    @classmethod
    def load(cls, run_dir: str | Path, overrides: dict[str, Any] | None = None) -> TrainedScene:
        """The scene of a run folder's last checkpoint (or of a file :meth:`save` wrote), with
        the EMA weights in the field. ``overrides`` (nested like config.json) may change what
        does not alter the model, e.g. ``{"data": {"path": ...}}`` when the scene moved. A run
        trained on a GPU loads on a machine without one, on the CPU with the torch backend."""
        path = Path(run_dir)
        if not path.exists():
            raise ConfigError(f"{path}: no such run folder; pass the folder a 'nerfmine train' "
                              "wrote (it holds checkpoint.pt).")
        state = load_run_checkpoint(path / CHECKPOINT_NAME if path.is_dir() else path)
        values = state["config"]
        if values.get("device", "cpu").startswith("cuda") and not torch.cuda.is_available():
            values["device"], values["backend"] = "cpu", "torch"
        if overrides:
            values = merge_overrides(values, overrides)
        config, _ = resolve_for_scene(config_from_dict(values), None)
        scene = cls.create(config)
        scene.load_state_dict(state)
        if scene.ema is None and state.get("ema") is not None:
            _copy_into(scene.field, state["ema"])
        return scene

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The scene's part of a checkpoint: config, field weights, EMA weights, occupancy,
        step, clock and the evaluation history."""
        return {
            "config": self.config.to_dict(),
            "field": self.field.state_dict(),
            "ema": [e.clone() for e in self.ema] if self.ema is not None else None,
            "occupancy": self.occupancy.state_dict(),
            "step": self.step,
            "clock": self.clock,
            "history": [vars(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load the scene's part of a checkpoint (see :meth:`state_dict`)."""
        try:
            self.field.load_state_dict(state["field"])
            if self.ema is not None:
                for e, s in zip(self.ema, state["ema"], strict=True):
                    e.copy_(s)
            self.occupancy.load_state_dict(state["occupancy"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"the checkpoint does not fit this config's model ({exc})") from None
        self.step = int(state.get("step", 0))
        self.clock = float(state.get("clock", 0.0))
        self.history = [EvalResult(**h) for h in state.get("history", [])]

    def save(self, path: str | Path) -> Path:
        """Write the scene alone (config, EMA weights, occupancy grid; no optimizer state) as a
        checkpoint file that :meth:`load` reads: a trained scene to keep or share."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        with self.ema_weights():  # the field's own tensors hold the EMA weights in the block
            state["field"] = {k: v.detach().clone() for k, v in self.field.state_dict().items()}
        state["ema"] = None  # the saved field holds the EMA weights
        save_checkpoint(path, state)
        return path

    # ------------------------------------------------------------------ geometry
    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)

    @property
    def backend(self) -> str:
        return self.config.backend

    @property
    def aabb_scale(self) -> float:
        """The modelled box is 0.5 +- aabb_scale / 2 in unit-cube coordinates."""
        return float(self.config.data.aabb_scale)

    @property
    def scale(self) -> float:
        """World to unit cube: x_unit = x_world * scale + offset."""
        return float(self.config.data.scale)

    @property
    def offset(self) -> tuple[float, float, float]:
        offset = self.config.data.offset
        return tuple(float(v) for v in (offset if len(offset) == 3 else list(offset) * 3))

    @property
    def data_root(self) -> Path:
        """The scene folder (or file) the run was trained on: config.data.path, or the demo."""
        from nerfmine.data.demo import demo_scene_path

        return Path(self.config.data.path) if self.config.data.path else demo_scene_path()

    def to_unit(self, cameras: Cameras) -> Cameras:
        """World-frame cameras in the unit cube, on the scene's device."""
        return cameras.transformed(self.scale, self.offset).to(self.device)

    def world_center(self):
        """The unit cube's centre in world coordinates ([3] float64 numpy)."""
        import numpy as np

        return (0.5 - np.asarray(self.offset, dtype=np.float64)) / self.scale

    # ------------------------------------------------------------------ data of the run
    def load_split(self, split: str, decode: bool = True, skip_missing: bool | None = None):
        """A split of the scene the run was trained on, read as the run read it (downscale,
        hold-out, sharpness filter): a :class:`~nerfmine.data.SceneData`. With
        ``decode=False`` only the image headers are read (cameras, sizes)."""
        from nerfmine.data import load_scene

        d = self.config.data
        return load_scene(self.data_root, split, d.downscale, holdout_every=d.holdout_every,
                          skip_missing=d.skip_missing if skip_missing is None else skip_missing,
                          decode=decode, min_sharpness=d.min_sharpness)

    def train_cameras(self) -> Cameras:
        """The training split's cameras in world coordinates, without decoding its images."""
        return self.load_split(self.config.data.train_split, decode=False).cameras()

    # ------------------------------------------------------------------ rendering
    @property
    def render_settings(self) -> RenderSettings:
        m, e = self.config.march, self.config.eval
        return RenderSettings(step_size=m.step_size, max_steps=m.max_steps_per_ray,
                              min_transmittance=m.min_transmittance,
                              rays_per_chunk=e.rays_per_chunk, backend=self.backend,
                              aabb_scale=self.aabb_scale, cone_angle=float(m.cone_angle or 0.0))

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Render with the EMA weights: swapped into the field for the block when the scene
        keeps them apart (a training run), a no-op when the field holds them already."""
        if self.ema is None:
            yield
            return
        params = list(self.field.parameters())
        backup = [p.detach().clone() for p in params]
        _copy_into(self.field, self.ema)
        try:
            yield
        finally:
            _copy_into(self.field, backup)

    def ema_snapshot(self) -> list[torch.Tensor]:
        """Clones of the weights a render uses (the EMA weights), for another thread's copy
        of the field (the viewer's)."""
        with torch.no_grad():
            source = self.ema if self.ema is not None else list(self.field.parameters())
            return [t.detach().clone() for t in source]

    def copy_field(self) -> NGPField:
        """A copy of the field with the weights a render uses and no gradient state (the
        viewer renders from it while training changes the original)."""
        sink = getattr(self.field, "table_grad_sink", None)
        memo = {id(sink): None} if sink is not None else {}  # the copy needs no sink
        field = copy.deepcopy(self.field, memo)
        field.requires_grad_(False)
        _copy_into(field, self.ema_snapshot())
        return field

    @torch.no_grad()
    def render(self, cameras: Cameras, index: int, background=WHITE,
               settings: RenderSettings | None = None) -> dict[str, torch.Tensor]:
        """Render camera ``index`` of ``cameras`` (unit-cube poses on the scene's device, see
        :meth:`to_unit`) with the current field weights: "rgb" [H, W, 3], "opacity" [H, W],
        "depth" [H, W] (unit-cube units). Wrap calls in :meth:`ema_weights` during training."""
        return render_image(self.field, self.occupancy.bitfield, cameras, index, background,
                            settings or self.render_settings)

    @torch.no_grad()
    def render_rays(self, origins: torch.Tensor, directions: torch.Tensor,
                    background: torch.Tensor, settings: RenderSettings | None = None):
        """Colour [R, 3], opacity [R] and depth [R] of unit-cube rays (see :meth:`render`)."""
        return render_rays(self.field, self.occupancy.bitfield, origins, directions, background,
                           settings or self.render_settings)


@torch.no_grad()
def _copy_into(field: NGPField, weights: list[torch.Tensor]) -> None:
    """Copy ``weights`` (in parameter order) into ``field`` and refresh its fp16 lookup table."""
    for p, w in zip(field.parameters(), weights, strict=True):
        p.copy_(w)
    field.sync_table_fp16()
