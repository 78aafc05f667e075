import torch

from nerfmine.cameras import Cameras
from nerfmine.field import ModelConfig, NGPField
from nerfmine.ops.composite import composite
from nerfmine.ops.march import march_rays
from nerfmine.render import RenderSettings, render_image, render_rays


def _field():
    field = NGPField(ModelConfig(n_levels=4, log2_table_size=10, base_resolution=4,
                                 max_resolution=64, hidden_dim=16, geo_feature_dim=8), seed=0)
    with torch.no_grad():
        field.table.uniform_(-2, 2, generator=torch.Generator().manual_seed(1))
        field.density_w2[0].mul_(4)  # dense enough that some rays terminate early
    return field


def test_segmented_rendering_matches_one_long_march():
    gen = torch.Generator().manual_seed(0)
    n = 57
    origins = torch.rand(n, 3, generator=gen) * 0.4 + torch.tensor([0.3, 0.3, -0.6])
    directions = torch.tensor([0.0, 0.0, 1.0]) + 0.6 * (torch.rand(n, 3, generator=gen) - 0.5)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    occupancy = torch.rand(16, 16, 16, generator=gen) < 0.5
    background = torch.rand(n, 3, generator=gen)
    field = _field()
    settings = RenderSettings(step_size=0.01, max_steps=200, min_transmittance=1e-4,
                              rays_per_chunk=20, samples_per_chunk=100)
    rgb, opacity, depth = render_rays(field, occupancy, origins, directions, background, settings)

    samples = march_rays(origins, directions, occupancy, step_size=0.01, max_steps=200)
    with torch.no_grad():
        raw = field(samples.positions, samples.directions)
        want_rgb, want_opacity, want_depth = composite(raw, samples, background)
    assert (want_opacity > 0.999).any() and (want_opacity < 0.5).any()  # both kinds of rays
    # Termination is tested per segment: at most min_transmittance of extra colour.
    torch.testing.assert_close(rgb, want_rgb, atol=2e-4, rtol=0)
    torch.testing.assert_close(opacity, want_opacity, atol=2e-4, rtol=0)
    torch.testing.assert_close(depth, want_depth, atol=2e-3, rtol=1e-4)


def test_render_image_shapes_and_ranges():
    field = _field()
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.5, 0.5, 1.8])  # looking down -z at the unit cube
    settings = RenderSettings(step_size=0.01, max_steps=300, min_transmittance=1e-4,
                              rays_per_chunk=64)
    cameras = Cameras.pinhole(c2w[None], 20.0, 20.0, 17, 12, cx=8.5, cy=6.0)
    out = render_image(field, torch.ones(8, 8, 8, dtype=torch.bool), cameras, 0,
                       (1.0, 1.0, 1.0), settings)
    assert out["rgb"].shape == (12, 17, 3) and out["depth"].shape == (12, 17)
    assert out["rgb"].min() >= 0 and out["rgb"].max() <= 1
    assert out["opacity"].min() >= 0 and out["opacity"].max() <= 1
    again = render_image(field, torch.ones(8, 8, 8, dtype=torch.bool), cameras, 0,
                         (1.0, 1.0, 1.0), settings)
    assert torch.equal(out["rgb"], again["rgb"])  # deterministic
