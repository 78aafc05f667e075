"""Fitting a signed distance function: the training step (plain MAPE or hard sample mining over
points), the IoU curve, the zero-level-set mesh, the run folder's files and resume.

The mining step (docs/hard-sample-mining.md, with training points as the samples and the
predicted distance as the one raw output):

1. draw B points of the pool uniformly with replacement; first pass over all of them without a
   graph;
2. the output gradient of the MAPE in closed form,
   ``dL/dpred_i = sign(pred_i - d_i) / ((|d_i| + 0.01) B)`` (:func:`mape_output_grad`);
3. :meth:`HardSampleMiner.mine` draws b of them (successive sampling proportional to |grad|,
   b from tau_bar as in NeRF);
4. second pass with the graph on the drawn points (padding slots get a zero gradient) and the
   backward with the cached gradients injected; then the Adam step and the EMA update.

The plain step ("none") runs one pass with the graph over the B points and backpropagates L.

A caveat measured on a sphere (tests/test_sdf.py): MAPE's gradient magnitude,
``1 / ((|d| + 0.01) B)``, depends on the target distance only, not on the error, so "hsm"
importance is a fixed function of d: the 7/8 of points on or near the surface (|d| ~ 0) carry
~20x the importance of the uniform 1/8, b = B/2 is filled almost only with them, and the signs
far from the surface are barely trained (IoU falls below the initial one on the CPU test).
"hsm-error" draws by the point's MAPE term instead (its error) and injects the same gradients;
it trains as well as the plain step there.

IoU (instant-ngp's ``calculate_iou``): ``iou_points`` uniform points in the mesh's grown box,
drawn once per run; inside for the mesh where its winding number exceeds 1/2, for the model
where its distance is <= 0 (EMA weights); IoU = |both inside| / |either inside|.

Run folder: ``config.json``, ``checkpoint.pt`` (atomic, hashed; written at every evaluation
point), ``metrics.json``, ``iou_curve.png``, ``mesh.ply`` (marching cubes of the EMA model's
zero level set over the grown box, in the input file's coordinates, through
:mod:`nerfmine.export`) and ``mesh_vs_truth.png`` (the ground truth beside the fitted mesh
from two views, :func:`nerfmine.plots.plot_meshes`). Resume continues bit-exactly on the same
device: the checkpoint holds the parameters, their EMA, Adam's moments, the miner's buffers and
the state of the generator that draws points and mining keys; the pool and the IoU points are
regenerated from the seed.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nerfmine.errors import NerfmineError
from nerfmine.fit_loop import FitLoop
from nerfmine.image.io import file_sha256
from nerfmine.plots import plot_meshes, plot_psnr_curve
from nerfmine.run_folder import TMP_SUFFIX
from nerfmine.sdf.config import SdfConfig
from nerfmine.sdf.field import SdfField, mape_loss, mape_output_grad, mape_terms
from nerfmine.sdf.mesh import read_mesh, require_igl
from nerfmine.sdf.samples import training_points, uniform_points

KIND = "nerfmine-sdf"
MESH_NAME = "mesh.ply"
COMPARISON_NAME = "mesh_vs_truth.png"
RESUMABLE = ("steps", "seconds", "eval_at", "eval_every", "mesh_resolution", "eval_chunk")


class SdfFit(FitLoop):
    """One SDF fit and its run folder. :meth:`create` starts one, :meth:`resume` continues
    one; :meth:`train` trains to ``config.steps`` or ``config.seconds`` and writes the folder's
    files (the three are :class:`~nerfmine.fit_loop.FitLoop`'s)."""

    COMMAND, METRIC, SOURCE = "sdf", "iou", "mesh"
    KIND = KIND
    CONFIG_CLASS, CONFIG_KEY = SdfConfig, "sdf_config"
    WRONG_KIND = "not an SDF run's checkpoint (nerfmine sdf writes those)"
    RESUMABLE = RESUMABLE
    RESUMABLE_FLAGS = "--steps, --seconds, --eval-at, --eval-every and --mesh-resolution"

    def __init__(self, config: SdfConfig, mesh_path: Path, run_dir: Path) -> None:
        self._start(config, run_dir)
        self.mesh_path = Path(mesh_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.mesh = read_mesh(self.mesh_path, config.bbox_padding)
        self.warnings = [str(w.message) for w in caught]
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        require_igl()
        self.mesh_sha256 = file_sha256(self.mesh_path)
        start = time.perf_counter()
        rng = np.random.default_rng([config.seed, 0])
        positions, distances = training_points(self.mesh, config.pool_size, rng,
                                               config.logistic_scale)
        self.pool_positions = torch.from_numpy(positions).to(self.device)  # [P, 3]
        self.pool_distances = torch.from_numpy(distances).to(self.device)  # [P]
        iou_points = uniform_points(self.mesh, config.iou_points,
                                    np.random.default_rng([config.seed, 1]))
        self.iou_inside = torch.from_numpy(self.mesh.inside(iou_points)).to(self.device)  # [M]
        self.iou_positions = torch.from_numpy(iou_points.astype(np.float32)).to(self.device)
        self.ground_truth_seconds = time.perf_counter() - start

        self.field = SdfField(config, self.backend, config.seed).to(self.device)
        self.ema = [p.detach().clone() for p in self.field.parameters()]
        self._start_training(l2_reg=config.l2_reg)

    def _load_state(self, state: dict[str, Any]) -> None:
        """The shared trained state and the EMA of the weights."""
        super()._load_state(state)
        for mine, saved in zip(self.ema, state["ema"]):
            mine.copy_(saved)

    # ------------------------------------------------------------------ training

    def train_step(self) -> torch.Tensor:
        """One step; returns the MAPE of the B points (a device scalar, no host read)."""
        index = torch.randint(self.pool_positions.shape[0], (self.config.samples_per_step,),
                              generator=self.generator, device=self.device)  # [B]
        positions, distances = self.pool_positions[index], self.pool_distances[index]
        n = positions.shape[0]
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        if self.miner is None:
            loss = mape_loss(self.field(positions), distances)
            loss.backward()
        else:
            with torch.no_grad():
                prediction = self.field(positions)  # [B], no graph
                grad = mape_output_grad(prediction, distances)[:, None]  # [B, 1] = dL/dpred
                loss = mape_loss(prediction, distances)
                importance = grad
                if self.config.mining == "hsm-error":
                    importance = mape_terms(prediction, distances)[:, None]  # [B, 1]
                mined = self.miner.mine(importance, n, generator=self.generator,
                                        backend=self.backend)
            out = self.field(positions[mined.indices])  # [S], with graph
            out.backward(mined.injected_grads(grad)[:, 0])
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.field.parameters()],
                                 1.0 - self.config.ema_decay)
        self.step += 1
        return loss.detach()

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """The field holds the EMA weights inside the block, its own weights after it."""
        params = list(self.field.parameters())
        live = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, self.ema):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(params, live):
                    p.copy_(w)

    def _evaluate_point(self) -> tuple[float, None]:
        return self.evaluate(), None

    def evaluate(self) -> float:
        """IoU of the EMA model's inside against the mesh's at the run's IoU points."""
        with self.ema_weights():
            inside = self.field.distances(self.iou_positions, self.config.eval_chunk) <= 0
        both = (inside & self.iou_inside).sum().item()
        either = (inside | self.iou_inside).sum().item()
        return both / either if either else 1.0

    # ------------------------------------------------------------------ outputs

    def _source_state(self) -> dict[str, Any]:
        return {"path": str(self.mesh_path.resolve()), "sha256": self.mesh_sha256}

    def _model_state(self) -> dict[str, Any]:
        return {**super()._model_state(), "ema": list(self.ema)}

    def zero_level_set(self) -> tuple[np.ndarray, np.ndarray]:
        """Marching cubes of the EMA model's zero level set over the mesh's grown box:
        vertices [V, 3] in the input file's coordinates and faces [F, 3], wound outward.
        Raises :class:`NerfmineError` when the model has no zero crossing there."""
        from nerfmine.export import extract_mesh, sample_density_grid

        lo, hi = self.mesh.box_min, self.mesh.box_max
        with self.ema_weights():
            # export.py's iso-surface has its larger values inside: -distance.
            grid = sample_density_grid(lambda p: -self.field.distances(p, len(p)),
                                       self.config.mesh_resolution, lo, hi,
                                       chunk=self.config.eval_chunk, device=self.device)
        vertices, faces = extract_mesh(grid, 0.0, lo, hi)
        return self.mesh.to_file_coordinates(vertices), faces

    def _write_mesh(self) -> tuple[np.ndarray, np.ndarray] | None:
        """mesh.ply through export.write_ply, written to a ``<name>.<random>.tmp`` beside it
        and renamed (atomic; remove_stale_temporaries cleans a killed write); returns the mesh
        written (vertices, faces), or None when the model has no zero level set."""
        from nerfmine.export import write_ply

        try:
            vertices, faces = self.zero_level_set()
        except NerfmineError as exc:
            warnings.warn(f"no mesh written: the model has no usable zero level set ({exc})",
                          stacklevel=2)
            return None
        tmp = self.run_dir / f"{MESH_NAME}.{os.getpid()}-{time.monotonic_ns()}{TMP_SUFFIX}"
        try:
            write_ply(tmp, vertices, faces)
            os.replace(tmp, self.run_dir / MESH_NAME)
        finally:
            tmp.unlink(missing_ok=True)
        return vertices, faces

    def _write_outputs(self, value: float, _payload: None = None) -> dict[str, Any]:
        self._save()
        written = self._write_mesh()
        if written is not None:
            plot_meshes({"ground truth": (self.mesh.to_file_coordinates(self.mesh.vertices),
                                          self.mesh.faces),
                         "fit (zero level set)": written},
                        self.run_dir / COMPARISON_NAME,
                        title=f"{self.mesh_path.name}, step {self.step}, IoU {value:.4f}")
        plot_psnr_curve(self.curve, self.run_dir / "iou_curve.png", metric="iou",
                        title=f"{self.mesh_path.name} ({self.config.mining})")
        metrics = {
            "mesh": str(self.mesh_path.resolve()),
            "watertight": self.mesh.watertight,
            "triangles": int(self.mesh.faces.shape[0]),
            "warnings": self.warnings,
            **self._run_metrics(),
            "ground_truth_seconds": self.ground_truth_seconds,
            "ground_truth_seconds_note": "pool distances and IoU signs (libigl, once per "
                                         "process, off the training clock)",
            "iou": value,
            "iou_over": f"{self.config.iou_points} uniform points in the mesh's bounding box "
                        f"grown by {self.config.bbox_padding} of its diagonal per side "
                        "(EMA weights; inside: distance <= 0 vs winding number > 1/2)",
            "mean_hard_fraction": self.miner.mean_fraction() if self.miner is not None else None,
            "zero_level_set": MESH_NAME if written is not None else None,
            "comparison": COMPARISON_NAME if written is not None else None,
            "curve": self.curve,
        }
        return self._write_metrics(metrics)
