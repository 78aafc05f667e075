"""GPU check and timing of the Triton marching and compositing kernels against the references.

    PYTHONPATH=src python benchmarks/render_ops_gpu.py --out benchmarks/results/render_ops.json

Full training size: ~5000 rays from cameras around the unit cube, a 128^3 occupancy grid with
about 10% of the cells occupied (random cells), instant-ngp's step sqrt(3)/1024 and 1024 steps,
capacity 2^18 (rays that do not fit are dropped, as in training). Checks:

- march: every PackedSamples field of the Triton marcher equals the reference's (bit for bit);
- composite: values and autograd gradients vs the float64-internal reference (fp32 and fp16 raw);
- composite_output_grads: loss and closed-form gradients vs the reference;
- no host synchronisation in the training-path calls (torch.cuda.set_sync_debug_mode("error")).

Times are medians of triton.testing.do_bench (ms). Writes JSON (GPU, versions, commit, config,
checks, timings) to --out and prints a summary. Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys

import torch


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        return "unknown"


def _camera_rays(n_rays: int, gen: torch.Generator, device: str):
    """Origins on a sphere of radius ~1.3 around the cube centre, aimed at points inside it."""
    origins = torch.randn(n_rays, 3, generator=gen)
    origins = 0.5 + 1.3 * origins / origins.norm(dim=-1, keepdim=True)
    targets = 0.5 + (torch.rand(n_rays, 3, generator=gen) - 0.5) * 0.8
    directions = torch.nn.functional.normalize(targets - origins, dim=-1)
    jitter = torch.rand(n_rays, generator=gen)
    return origins.to(device), directions.to(device), jitter.to(device)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.double(), b.double()
    diff = (a - b).abs()
    return {
        "max_abs": diff.max().item() if diff.numel() else 0.0,
        "max_ref": b.abs().max().item() if b.numel() else 0.0,
        "max_rel_to_max": (diff.max() / b.abs().max().clamp_min(1e-30)).item()
        if diff.numel()
        else 0.0,
    }


def _close(a, b, rtol, atol) -> bool:
    return bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/render_ops_gpu.json")
    parser.add_argument("--rays", type=int, default=5000)
    parser.add_argument("--capacity", type=int, default=1 << 18)
    parser.add_argument("--res", type=int, default=128)
    parser.add_argument("--occupied", type=float, default=0.10)
    parser.add_argument("--max-steps", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("render_ops_gpu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton
    from triton.testing import do_bench

    from nerfmine.ops._triton.composite import composite_output_grads_triton, composite_triton
    from nerfmine.ops._triton.march import march_rays_triton
    from nerfmine.ops.composite import composite, composite_output_grads
    from nerfmine.ops.march import march_rays

    device = "cuda"
    gen = torch.Generator().manual_seed(args.seed)
    step_size = math.sqrt(3.0) / 1024.0
    origins, directions, jitter = _camera_rays(args.rays, gen, device)
    occupancy = (torch.rand(args.res, args.res, args.res, generator=gen) < args.occupied).to(device)
    march_kw = dict(
        step_size=step_size, max_steps=args.max_steps, capacity=args.capacity, jitter=jitter
    )

    def bench(fn) -> float:
        return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))

    checks: dict[str, dict] = {}
    timings: dict[str, float] = {}

    # --- march -------------------------------------------------------------------------------
    ref = march_rays(origins, directions, occupancy, **march_kw, backend="torch")
    out = march_rays(origins, directions, occupancy, **march_kw, backend="triton")
    fields = {}
    for name in (
        "positions",
        "directions",
        "t",
        "dt",
        "ray_ids",
        "ray_starts",
        "ray_counts",
        "ray_valid",
        "n_samples",
    ):
        a, b = getattr(out, name), getattr(ref, name)
        same = a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
        entry = {"identical": same}
        if not same and a.shape == b.shape:
            entry["mismatches"] = int((a != b).sum().item())
            if a.is_floating_point():
                entry.update(_max_err(a, b))
        fields[name] = entry
    unclamped = march_rays(
        origins,
        directions,
        occupancy,
        step_size=step_size,
        max_steps=args.max_steps,
        capacity=None,
        jitter=jitter,
    )
    checks["march"] = {
        "pass": all(f["identical"] for f in fields.values()),
        "fields": fields,
        "n_samples": int(ref.n_samples.item()),
        "samples_without_capacity": int(unclamped.n_samples.item()),
        "rays_dropped": int(
            (ref.ray_counts == 0).sum().item() - (unclamped.ray_counts == 0).sum().item()
        ),
        "mean_samples_per_ray": float(unclamped.n_samples.item()) / args.rays,
    }
    exact = march_rays(
        origins,
        directions,
        occupancy,
        step_size=step_size,
        max_steps=args.max_steps,
        capacity=None,
        jitter=jitter,
        backend="triton",
    )
    checks["march_capacity_none"] = {
        "pass": bool(
            torch.equal(exact.t, unclamped.t) and torch.equal(exact.ray_ids, unclamped.ray_ids)
        )
    }
    timings["march_triton_ms"] = bench(
        lambda: march_rays_triton(origins, directions, occupancy, **march_kw)
    )
    # Cascades and exponential stepping (aabb_scale 4: 3 cascades, cone angle 1/256), rays from
    # the same cameras; a subset of the rays keeps the torch reference's walk affordable.
    cascades = (torch.rand(3, args.res, args.res, args.res, generator=gen) < args.occupied)
    cascades = cascades.to(device)
    n_large = min(args.rays, 1 << 14)
    large_kw = dict(step_size=step_size, max_steps=args.max_steps, capacity=args.capacity,
                    jitter=jitter[:n_large], aabb_scale=4.0, cone_angle=1.0 / 256.0)
    large_args = (origins[:n_large], directions[:n_large], cascades)
    ref_large = march_rays(*large_args, **large_kw, backend="torch")
    out_large = march_rays(*large_args, **large_kw, backend="triton")
    checks["march_cascades_exponential"] = {
        "pass": all(bool(torch.equal(getattr(out_large, f), getattr(ref_large, f))) for f in (
            "positions", "directions", "t", "dt", "ray_ids", "ray_starts", "ray_counts",
            "ray_valid", "n_samples")),
        "rays": n_large,
        "n_samples": int(ref_large.n_samples.item()),
    }
    timings["march_cascades_exponential_triton_ms"] = bench(
        lambda: march_rays(*large_args, **large_kw, backend="triton")
    )
    timings["march_torch_ms"] = bench(
        lambda: march_rays(origins, directions, occupancy, **march_kw, backend="torch")
    )

    samples = out
    n_rays = samples.n_rays
    capacity = samples.capacity
    # Densities such that rays terminate early in places (s ~ N(1, 2): sigma up to e^7).
    raw32 = torch.randn(capacity, 4, generator=gen).to(device) * 2.0
    raw32[:, 0] += 1.0
    background = torch.rand(n_rays, 3, generator=gen).to(device)
    target = torch.rand(n_rays, 3, generator=gen).to(device)
    upstream = [
        torch.randn(n_rays, 3, generator=gen).to(device),
        torch.randn(n_rays, generator=gen).to(device),
        torch.randn(n_rays, generator=gen).to(device),
    ]

    # --- composite (values + autograd) ------------------------------------------------------
    for dtype_name, raw in (("fp32", raw32), ("fp16", raw32.half())):
        leaf_ref = raw.float().clone().requires_grad_()
        leaf_tri = raw.clone().requires_grad_()
        ref_out = composite(leaf_ref, samples, background, backend="torch")
        tri_out = composite(leaf_tri, samples, background, backend="triton")
        (g_ref,) = torch.autograd.grad(ref_out, leaf_ref, upstream)
        (g_tri,) = torch.autograd.grad(tri_out, leaf_tri, upstream)
        g_tri = g_tri.float()
        gtol = 1e-2 if dtype_name == "fp16" else 1e-5  # fp16 gradient is rounded on return
        entry = {
            name: _max_err(a, b)
            for name, a, b in zip(("rgb", "opacity", "depth"), tri_out, ref_out, strict=True)
        }
        entry["grad_raw"] = _max_err(g_tri, g_ref)
        entry["pass"] = all(
            _close(a, b, 1e-5, 1e-5) for a, b in zip(tri_out, ref_out, strict=True)
        ) and _close(g_tri, g_ref, gtol, gtol * 1e-1 * g_ref.abs().max().item())
        checks[f"composite_{dtype_name}"] = entry

    # --- composite_output_grads ---------------------------------------------------------------
    loss_ref, grad_ref = composite_output_grads(raw32, samples, background, target, backend="torch")
    loss_tri, grad_tri = composite_output_grads(
        raw32, samples, background, target, backend="triton"
    )
    n = int(samples.n_samples.item())
    checks["composite_output_grads"] = {
        "loss": _max_err(loss_tri, loss_ref),
        "grad_raw": _max_err(grad_tri, grad_ref),
        "padding_zero": bool((grad_tri[n:] == 0).all().item()),
        "zero_rows_match": bool(torch.equal((grad_tri == 0).all(1), (grad_ref == 0).all(1))),
        "pass": _close(loss_tri, loss_ref, 1e-5, 1e-7)
        and _close(grad_tri, grad_ref, 1e-5, 1e-6 * grad_ref.abs().max().item())
        and bool((grad_tri[n:] == 0).all().item()),
    }

    # --- no host synchronisation on the training path -----------------------------------------
    torch.cuda.synchronize()
    sync_ok, sync_error = True, None
    try:
        torch.cuda.set_sync_debug_mode("error")
        s = march_rays_triton(origins, directions, occupancy, **march_kw)
        composite_output_grads_triton(raw32, s, background, target)
        leaf = raw32.clone().requires_grad_()
        rgb, _, _ = composite_triton(leaf, s, background)
        rgb.backward(upstream[0])
    except RuntimeError as exc:  # raised by a synchronising call
        sync_ok, sync_error = False, str(exc)[:500]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    checks["no_host_sync"] = {"pass": sync_ok, "error": sync_error}

    # --- timings ------------------------------------------------------------------------------
    leaf = raw32.clone().requires_grad_()
    timings["composite_fwd_triton_ms"] = bench(lambda: composite_triton(raw32, samples, background))
    timings["composite_fwd_torch_ms"] = bench(
        lambda: composite(raw32, samples, background, backend="torch")
    )

    def fwd_bwd(backend):
        def run():
            rgb, opacity, depth = composite(leaf, samples, background, backend=backend)
            torch.autograd.backward((rgb, opacity, depth), upstream)

        return run

    timings["composite_fwd_bwd_triton_ms"] = bench(fwd_bwd("triton"))
    timings["composite_fwd_bwd_torch_ms"] = bench(fwd_bwd("torch"))
    raw16 = raw32.half()
    timings["composite_fwd_triton_fp16_ms"] = bench(
        lambda: composite_triton(raw16, samples, background)
    )
    timings["output_grads_triton_ms"] = bench(
        lambda: composite_output_grads_triton(raw32, samples, background, target)
    )
    timings["output_grads_triton_fp16_ms"] = bench(
        lambda: composite_output_grads_triton(raw16, samples, background, target)
    )
    timings["output_grads_torch_ms"] = bench(
        lambda: composite_output_grads(raw32, samples, background, target, backend="torch")
    )
    # Chunk sizes (samples per chunk for compositing, candidates per chunk for marching).
    for block in (16, 32, 64):
        timings[f"output_grads_triton_block{block}_ms"] = bench(
            lambda b=block: composite_output_grads_triton(
                raw32, samples, background, target, block=b
            )
        )
    for block in (64, 128, 256):
        timings[f"march_triton_block{block}_ms"] = bench(
            lambda b=block: march_rays_triton(origins, directions, occupancy, **march_kw, block=b)
        )

    ok = all(c["pass"] for c in checks.values())
    result = {
        "benchmark": "render_ops_gpu",
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "rays": args.rays,
            "capacity": args.capacity,
            "res": args.res,
            "occupied_fraction": args.occupied,
            "occupied_fraction_actual": occupancy.float().mean().item(),
            "step_size": step_size,
            "max_steps": args.max_steps,
            "seed": args.seed,
        },
        "all_checks_pass": ok,
        "checks": checks,
        "timings_ms_median": timings,
    }
    march = checks["march"]
    print(f"GPU: {result['gpu']}  torch {torch.__version__}  triton {triton.__version__}")
    print(
        f"samples: {march['n_samples']} (unclamped {march['samples_without_capacity']}), "
        f"rays dropped: {march['rays_dropped']}"
    )
    for name, check in checks.items():
        print(f"check {name:28s} {'PASS' if check['pass'] else 'FAIL'}")
    for name, ms in timings.items():
        print(f"{name:40s} {ms:9.4f} ms")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
