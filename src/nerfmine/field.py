"""The Instant-NGP radiance field: hash grid, density MLP, SH directions, colour MLP."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nerfmine.ops.hash_grid import HashGridSpec, hash_grid_encode, init_hash_table
from nerfmine.ops.mlp import density_layers, fused_shapes_ok, ngp_mlp_forward, ngp_mlps
from nerfmine.ops.scene_box import aabb_bounds
from nerfmine.ops.sh import sh_encode


@dataclass(frozen=True)
class ModelConfig:
    """The field's hyperparameters; defaults are instant-ngp's NeRF setting (Table 1)."""

    n_levels: int = 16
    """Hash-grid levels L (instant-ngp Table 1)."""
    n_features: int = 2
    """Features per table entry F."""
    log2_table_size: int = 19
    """log2 of the entries per level T (2^19 in instant-ngp's NeRF setting)."""
    base_resolution: int = 16
    """Coarsest grid resolution Nmin."""
    max_resolution: int = 2048
    """Finest grid resolution Nmax over the unit cube; the field uses max_resolution x
    aabb_scale over the scene's box (instant-ngp), the same cell size (--max-resolution).

    instant-ngp's 2048 is made for 800-px images. Small images of an object seen from new
    viewpoints generalise better with a coarser finest level, real captures worse; what it
    does on lego_400 and fox is measured in BENCHMARKS.md ("What the finest resolution
    does"), which is why the default stays instant-ngp's."""
    hidden_dim: int = 64
    """Width of the density and colour MLPs' hidden layers."""
    geo_feature_dim: int = 16
    """Outputs of the density MLP; the first is the raw log-density."""
    sh_degree: int = 4
    """Degree of the spherical-harmonics view-direction encoding (16 coefficients)."""


def _xavier_uniform(out_dim: int, in_dim: int, generator: torch.Generator) -> torch.Tensor:
    bound = math.sqrt(6.0 / (in_dim + out_dim))
    return (torch.rand(out_dim, in_dim, generator=generator) * 2 - 1) * bound


class NGPField(nn.Module):
    """Instant-NGP NeRF network (Müller et al. 2022, Sec. 5.4), without biases as in tcnn.

    density MLP: encoding (L*F) -> hidden (ReLU) -> geo_feature_dim; output 0 is the raw
    log-density s. colour MLP: [geo features, SH(direction)] -> hidden -> hidden -> 3.
    ``forward`` returns the 4 pre-activation outputs [s, c_r, c_g, c_b] per sample; the
    compositor applies trunc_exp and sigmoid. Directions get no gradient.
    """

    def __init__(self, config: ModelConfig, backend: str = "torch", seed: int = 0,
                 aabb_scale: float = 1.0):
        super().__init__()
        self.config = config
        self.backend = backend
        # The encoding's domain is the scene's box 0.5 +- aabb_scale / 2 (instant-ngp's
        # warp_position), and its finest level max_resolution x aabb_scale (instant-ngp's
        # per-level scale), so a cell of the finest level keeps its size in the unit cube.
        self.aabb_scale = float(aabb_scale)
        self.aabb_min, self.aabb_max = aabb_bounds(self.aabb_scale)
        finest = config.max_resolution
        if self.aabb_scale != 1.0:
            finest = int(round(config.max_resolution * min(self.aabb_scale, 128.0)))
        self.spec = HashGridSpec(
            n_levels=config.n_levels,
            n_features=config.n_features,
            log2_table_size=config.log2_table_size,
            base_resolution=config.base_resolution,
            max_resolution=finest,
        )
        gen = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(init_hash_table(self.spec, generator=gen))  # [T_all, F]
        enc_dim, hid, geo = self.spec.output_dim, config.hidden_dim, config.geo_feature_dim
        sh_dim = config.sh_degree**2
        self.density_w1 = nn.Parameter(_xavier_uniform(hid, enc_dim, gen))
        self.density_w2 = nn.Parameter(_xavier_uniform(geo, hid, gen))
        self.color_w1 = nn.Parameter(_xavier_uniform(hid, geo + sh_dim, gen))
        self.color_w2 = nn.Parameter(_xavier_uniform(hid, hid, gen))
        self.color_w3 = nn.Parameter(_xavier_uniform(3, hid, gen))
        # A trainer may give the table's gradient a preallocated home: the backward then adds
        # into it (several backward passes, no dense temporary) and table.grad is left unset.
        self.table_grad_sink: torch.Tensor | None = None
        # The triton backend looks the table up in fp16. An owner that keeps an fp16 copy in
        # sync (keep_table_fp16: the trainer's optimizer writes it with every update, and
        # sync_table_fp16 follows any other change) spares each pass a copy of the table.
        self.table_fp16: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(_sync_after_load)
        # Passes without a graph under fp16 autocast may run both MLPs as one Triton kernel
        # (nerfmine.ops.mlp); the trainer sets this from train.fused_inference_mlp.
        self.fused_inference = False

    def mlp_parameters(self) -> list[nn.Parameter]:
        """The MLP weights (L2-regularised); the hash table is not among them."""
        return [self.density_w1, self.density_w2, self.color_w1, self.color_w2, self.color_w3]

    def encoding_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """Unit-cube positions [N, 3] -> the hash grid's [0, 1]^3 over the scene's box (clamped).
        The identity (the same tensor) for aabb_scale 1."""
        if self.aabb_scale == 1.0:
            return positions
        size = self.aabb_max - self.aabb_min
        return ((positions - self.aabb_min) / size).clamp(0.0, 1.0)

    def keep_table_fp16(self) -> torch.Tensor:
        """Allocate (once) and fill the fp16 lookup copy of the table; returns it. Whoever
        changes the table in place afterwards must keep the copy in sync (an optimizer
        writing it, or :meth:`sync_table_fp16`)."""
        if self.table_fp16 is None or self.table_fp16.device != self.table.device:
            self.table_fp16 = torch.empty_like(self.table, dtype=torch.float16)
        self.sync_table_fp16()
        return self.table_fp16

    @torch.no_grad()
    def sync_table_fp16(self) -> None:
        """Refresh the fp16 lookup copy from the table (no-op when none is kept)."""
        if self.table_fp16 is not None:
            self.table_fp16.copy_(self.table.detach())

    def _encode(self, positions: torch.Tensor) -> torch.Tensor:
        """Hash-grid encodings [N, L*F] of unit-cube positions."""
        lookup = self.table_fp16 if self.backend == "triton" else None
        return hash_grid_encode(self.encoding_positions(positions), self.table, self.spec,
                                backend=self.backend, grad_sink=self.table_grad_sink,
                                table_fp16=lookup)

    def forward(self, positions: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """Raw outputs [N, 4] at positions [N, 3] (unit-cube coordinates; inside the scene's box
        0.5 +- aabb_scale / 2) seen from directions [N, 3].

        float32 (float64 for a float64 field, as in gradient checks)."""
        enc = self._encode(positions)  # [N, L*F]
        sh = sh_encode(directions, degree=self.config.sh_degree, backend=self.backend)
        if self._use_fused_inference():
            return ngp_mlp_forward(enc, sh, self.mlp_parameters(), backend=self.backend)
        raw = ngp_mlps(enc, sh, self.mlp_parameters())  # [N, 4]; fp16 under autocast
        return raw.float() if raw.dtype in (torch.float16, torch.bfloat16) else raw

    def _use_fused_inference(self) -> bool:
        """The fused MLP kernel applies: asked for, no graph being built, the triton backend,
        fp16 autocast on (the kernel's arithmetic) and widths the kernel takes."""
        if not self.fused_inference or torch.is_grad_enabled() or self.backend != "triton":
            return False
        if not (torch.is_autocast_enabled("cuda")
                and torch.get_autocast_dtype("cuda") == torch.float16):
            return False
        c = self.config
        return fused_shapes_ok(self.spec.output_dim, c.hidden_dim, c.geo_feature_dim,
                               c.sh_degree**2)

    @torch.no_grad()
    def density(self, positions: torch.Tensor) -> torch.Tensor:
        """Density sigma [N] at positions [N, 3] (no gradient); used by the occupancy grid."""
        s = density_layers(self._encode(positions), self.density_w1, self.density_w2)[:, 0]
        s = s.float()
        return torch.exp(s.clamp(max=15.0))


def _sync_after_load(module: nn.Module, incompatible_keys: object) -> None:
    assert isinstance(module, NGPField)
    module.sync_table_fp16()
