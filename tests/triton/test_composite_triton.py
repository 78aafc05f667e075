"""Triton compositing (nerfmine.ops._triton.composite) vs the PyTorch reference.

Tolerances: the reference computes the per-sample terms and the per-ray sums in float64, the
kernels in float32 with a different summation order (chunked scans), so values agree to a few
float32 ulps of the largest term of a ray: rtol 1e-5 plus a small atol for entries that are
differences of O(1) sums (colour and density gradients near termination).
"""

from __future__ import annotations

import pytest
import torch

from nerfmine.ops.composite import composite, composite_output_grads
from nerfmine.ops.packed import PackedSamples

pytestmark = pytest.mark.interpreter

RTOL = 1e-5
ATOL = 1e-6


def _packed(counts, valid, capacity, device, seed):
    """Hand-built PackedSamples with the given per-ray counts (invalid rays are dropped)."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.as_tensor(counts, dtype=torch.int64)
    valid = torch.as_tensor(valid, dtype=torch.bool)
    n_rays = counts.shape[0]
    ray_counts = torch.where(valid, counts, 0)
    n_samples = int(ray_counts.sum())
    assert n_samples <= capacity
    ray_starts = torch.cumsum(ray_counts, 0) - ray_counts
    ray_starts = torch.where(valid, ray_starts, n_samples)
    ray_ids = torch.full((capacity,), n_rays, dtype=torch.int64)
    ray_ids[:n_samples] = torch.repeat_interleave(torch.arange(n_rays), ray_counts)
    dt = torch.zeros(capacity)
    dt[:n_samples] = 0.005 + 0.045 * torch.rand(n_samples, generator=gen)
    t = torch.zeros(capacity)
    for r in range(n_rays):
        a, n = int(ray_starts[r]), int(ray_counts[r])
        if n:
            seg = dt[a : a + n]
            t[a : a + n] = 0.2 + torch.cumsum(seg, 0) - 0.5 * seg
    positions = torch.full((capacity, 3), 0.5)
    positions[:n_samples] = torch.rand(n_samples, 3, generator=gen)
    directions = torch.zeros(capacity, 3)
    directions[:, 2] = 1.0
    samples = PackedSamples(
        positions=positions,
        directions=directions,
        t=t,
        dt=dt,
        ray_ids=ray_ids,
        ray_starts=ray_starts,
        ray_counts=ray_counts,
        ray_valid=valid,
        n_samples=torch.tensor(n_samples),
        n_rays=n_rays,
    )
    for name in ("positions", "directions", "t", "dt", "ray_ids", "ray_starts", "ray_counts",
                 "ray_valid", "n_samples"):
        setattr(samples, name, getattr(samples, name).to(device))
    return samples


def _raw(samples, seed, dense_rays=(), scale=2.0):
    """Raw outputs; rays in ``dense_rays`` get high densities so that they terminate early."""
    gen = torch.Generator().manual_seed(seed + 1000)
    capacity = samples.capacity
    raw = torch.randn(capacity, 4, generator=gen) * scale
    raw[:, 0] += 1.0
    ids = samples.ray_ids.cpu()
    for r in dense_rays:
        raw[ids == r, 0] += 5.0  # sigma ~ e^6 = 400, dt ~ 0.03: tau ~ 10 per sample
    # Padding holds garbage (even inf): it must not matter.
    raw[samples.n_samples.item() :, 0] = float("inf")
    return raw.to(samples.dt.device)


CASES = {
    # name: (counts, valid, capacity, dense rays)
    "one_ray": ([13], [True], 16, ()),
    "one_empty_ray": ([0], [True], 4, ()),
    "five": ([5, 0, 40, 1, 33], [True, True, True, True, True], 90, (2,)),
    "thirteen": (
        [3, 70, 0, 12, 31, 32, 33, 1, 0, 66, 9, 45, 2],
        [True] * 9 + [False] * 4,  # dropped rays at the end, as the marcher drops them
        300,
        (1, 5, 9),
    ),
}


def _case(name, device, seed=0):
    counts, valid, capacity, dense = CASES[name]
    samples = _packed(counts, valid, capacity, device, seed)
    raw = _raw(samples, seed, dense)
    gen = torch.Generator().manual_seed(seed + 7)
    bg = torch.rand(samples.n_rays, 3, generator=gen).to(device)
    target = torch.rand(samples.n_rays, 3, generator=gen).to(device)
    return samples, raw, bg, target


def _terminated(raw, samples, min_transmittance=1e-4):
    """[C] bool: real samples after early termination (float64 transmittance before them)."""
    tau = (torch.exp(raw[:, 0].double()) * samples.dt.double()).clamp(max=64.0).cpu()
    out = torch.zeros(samples.capacity, dtype=torch.bool)
    for r in range(samples.n_rays):
        a, n = int(samples.ray_starts[r]), int(samples.ray_counts[r])
        before = torch.cumsum(tau[a : a + n], 0) - tau[a : a + n]
        out[a : a + n] = torch.exp(-before) < min_transmittance
    return out.to(raw.device)


@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_reference(device, name):
    samples, raw, bg, _ = _case(name, device)
    ref = composite(raw, samples, bg, backend="torch")
    out = composite(raw, samples, bg, backend="triton")
    for a, b, what in zip(out, ref, ("rgb", "opacity", "depth"), strict=True):
        assert a.dtype == torch.float32 and a.shape == b.shape, what
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=what)
    # Invalid and empty rays show the background.
    empty = samples.ray_counts == 0
    torch.testing.assert_close(out[0][empty], bg[empty])
    assert (out[1][empty] == 0).all()


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("block", [4, 32])
def test_gradients_match_reference(device, name, block):
    from nerfmine.ops._triton.composite import composite_triton

    samples, raw, bg, _ = _case(name, device, seed=1)
    gen = torch.Generator().manual_seed(5)
    upstream = [
        torch.randn(samples.n_rays, 3, generator=gen).to(device),
        torch.randn(samples.n_rays, generator=gen).to(device),
        torch.randn(samples.n_rays, generator=gen).to(device),
    ]
    raw_ref = raw.clone().requires_grad_()
    raw_tri = raw.clone().requires_grad_()
    ref = composite(raw_ref, samples, bg, backend="torch")
    out = composite_triton(raw_tri, samples, bg, block=block)
    (g_ref,) = torch.autograd.grad(ref, raw_ref, upstream)
    (g_tri,) = torch.autograd.grad(out, raw_tri, upstream)
    n = samples.n_samples.item()
    scale = g_ref.abs().max().clamp_min(1.0)
    torch.testing.assert_close(g_tri[:n], g_ref[:n], rtol=RTOL, atol=ATOL * scale)
    # Padding (raw = inf there) and terminated samples: exactly zero.
    assert (g_tri[n:] == 0).all()
    assert (g_tri[_terminated(raw, samples)] == 0).all()


def test_gradient_of_one_output_only(device):
    """Outputs that do not reach the loss arrive as None in backward."""
    samples, raw, bg, _ = _case("five", device, seed=2)
    raw_ref = raw.clone().requires_grad_()
    raw_tri = raw.clone().requires_grad_()
    composite(raw_ref, samples, bg, backend="torch")[2].sum().backward()
    composite(raw_tri, samples, bg, backend="triton")[2].sum().backward()
    torch.testing.assert_close(raw_tri.grad, raw_ref.grad, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("block", [4, 32])
def test_output_grads_match_reference(device, name, block):
    from nerfmine.ops._triton.composite import composite_output_grads_triton

    samples, raw, bg, target = _case(name, device, seed=3)
    loss_ref, grad_ref = composite_output_grads(raw, samples, bg, target, backend="torch")
    loss, grad = composite_output_grads_triton(raw, samples, bg, target, block=block)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    assert grad.shape == raw.shape and loss.shape == (samples.n_rays,)
    torch.testing.assert_close(loss, loss_ref, rtol=RTOL, atol=1e-7)
    scale = grad_ref.abs().max().clamp_min(1e-3)
    torch.testing.assert_close(grad, grad_ref, rtol=RTOL, atol=ATOL * scale)
    n = samples.n_samples.item()
    assert (grad[n:] == 0).all()
    assert (grad[_terminated(raw, samples)] == 0).all()
    assert (loss[~samples.ray_valid] == 0).all()


@pytest.mark.parametrize("name", ["five", "thirteen"])
def test_output_grads_equal_autograd_of_triton_composite(device, name):
    """The fused closed form equals autograd through the Triton compositor (two kernels)."""
    samples, raw, bg, target = _case(name, device, seed=4)
    loss, grad = composite_output_grads(raw, samples, bg, target, backend="triton")
    raw_leaf = raw.clone().requires_grad_()
    rgb, _, _ = composite(raw_leaf, samples, bg, backend="triton")
    per_ray = (rgb - target).square().mean(dim=1) * samples.ray_valid
    per_ray.sum().backward()
    torch.testing.assert_close(loss, per_ray.detach(), rtol=RTOL, atol=1e-7)
    torch.testing.assert_close(grad, raw_leaf.grad, rtol=RTOL, atol=1e-7)


def test_fp16_raw(device):
    """fp16 outputs are upcast on load: same result as the reference fed the same values."""
    samples, raw, bg, target = _case("thirteen", device, seed=5)
    raw16 = raw.half()
    raw16[samples.n_samples.item() :] = 0  # fp16 inf is fine too, but keep the check simple
    ref = composite(raw16.float(), samples, bg, backend="torch")
    out = composite(raw16, samples, bg, backend="triton")
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    loss_ref, grad_ref = composite_output_grads(raw16.float(), samples, bg, target)
    loss, grad = composite_output_grads(raw16, samples, bg, target, backend="triton")
    torch.testing.assert_close(loss, loss_ref, rtol=RTOL, atol=1e-7)
    torch.testing.assert_close(grad, grad_ref, rtol=RTOL, atol=ATOL * grad_ref.abs().max())
    raw_leaf = raw16.clone().requires_grad_()
    composite(raw_leaf, samples, bg, backend="triton")[0].sum().backward()
    assert raw_leaf.grad.dtype == torch.float16 and torch.isfinite(raw_leaf.grad).all()


def test_infinite_density_terminates_cleanly(device):
    """A sample with s = +inf (optical depth capped at 64) is opaque: no NaN, and the samples
    behind it are terminated with exactly zero gradient."""
    samples = _packed([6, 4], [True, True], 12, device, seed=6)
    raw = _raw(samples, seed=6)
    raw[2, 0] = float("inf")
    raw[7, 0] = 60.0  # exp(60) finite but tau far above the cap
    bg = torch.rand(2, 3).to(device)
    target = torch.rand(2, 3).to(device)
    ref = composite(raw, samples, bg, backend="torch")
    out = composite(raw, samples, bg, backend="triton")
    for a, b in zip(out, ref, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    loss_ref, grad_ref = composite_output_grads(raw, samples, bg, target)
    loss, grad = composite_output_grads(raw, samples, bg, target, backend="triton")
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(loss, loss_ref, rtol=RTOL, atol=1e-7)
    torch.testing.assert_close(grad, grad_ref, rtol=RTOL, atol=ATOL)
    assert (grad[3:6] == 0).all() and (grad[8:10] == 0).all()
    assert (grad[2, 0] == 0) and (grad[7, 0] == 0)  # the cap's derivative


def test_min_transmittance_argument(device):
    samples, raw, bg, target = _case("thirteen", device, seed=8)
    for thr in (0.0, 0.3):
        ref = composite(raw, samples, bg, backend="torch", min_transmittance=thr)
        out = composite(raw, samples, bg, backend="triton", min_transmittance=thr)
        for a, b in zip(out, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
        ref_g = composite_output_grads(raw, samples, bg, target, min_transmittance=thr)
        out_g = composite_output_grads(
            raw, samples, bg, target, backend="triton", min_transmittance=thr
        )
        torch.testing.assert_close(out_g[0], ref_g[0], rtol=RTOL, atol=1e-7)
        torch.testing.assert_close(
            out_g[1], ref_g[1], rtol=RTOL, atol=ATOL * ref_g[1].abs().max()
        )


def test_no_rays(device):
    samples = _packed([], [], 8, device, seed=9)
    raw = torch.zeros(8, 4, device=device)
    bg = torch.zeros(0, 3, device=device)
    rgb, opacity, depth = composite(raw, samples, bg, backend="triton")
    assert rgb.shape == (0, 3) and opacity.shape == (0,) and depth.shape == (0,)
    loss, grad = composite_output_grads(raw, samples, bg, bg, backend="triton")
    assert loss.shape == (0,) and (grad == 0).all()


def test_marched_samples(device):
    """End to end on samples from the marcher (reference marcher: this file tests compositing)."""
    from nerfmine.ops.march import march_rays

    gen = torch.Generator().manual_seed(10)
    n_rays, res = 9, 8
    occupancy = torch.rand(res, res, res, generator=gen) < 0.4
    origins = torch.rand(n_rays, 3, generator=gen) * 0.6 + 0.2
    directions = torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=gen), dim=-1)
    samples = march_rays(origins.to(device), directions.to(device), occupancy.to(device),
                         step_size=0.02, max_steps=64, capacity=200)
    raw = torch.randn(samples.capacity, 4, generator=gen).to(device) * 2
    bg = torch.rand(n_rays, 3, generator=gen).to(device)
    target = torch.rand(n_rays, 3, generator=gen).to(device)
    triton_out = composite(raw, samples, bg, backend="triton")
    for a, b in zip(triton_out, composite(raw, samples, bg), strict=True):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    loss_ref, grad_ref = composite_output_grads(raw, samples, bg, target)
    loss, grad = composite_output_grads(raw, samples, bg, target, backend="triton")
    torch.testing.assert_close(loss, loss_ref, rtol=RTOL, atol=1e-7)
    torch.testing.assert_close(grad, grad_ref, rtol=RTOL, atol=ATOL * grad_ref.abs().max())
