"""Check and time the Triton kernels (hash grid, SH, inference MLP, Adam, mining) on a GPU.

    PYTHONPATH=src python benchmarks/kernels_gpu.py --out benchmarks/results/kernels_gpu.json

Each kernel is compared with its PyTorch reference at full size (2^18 points, the default hash
grid spec: 16 levels, T = 2^19) and timed with ``triton.testing.do_bench`` (median, ms).
Every section runs in its own try block: a failure is recorded in the JSON (``errors``) and the
script goes on. The exit status is 1 when a check failed or a section raised, else 0.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
import traceback
from pathlib import Path

import torch


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    denom = b.abs().max().item()
    diff = (a.double() - b.double()).abs().max().item()
    return diff / denom if denom > 0 else diff


def _bench(fn, warmup=25, rep=100) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def _ray_ordered_points(n: int, samples_per_ray: int, gen: torch.Generator) -> torch.Tensor:
    """NeRF-like sample order: contiguous runs along rays, step sqrt(3)/1024 in the unit cube."""
    n_rays = math.ceil(n / samples_per_ray)
    origin = torch.rand(n_rays, 3, generator=gen) * 0.6 + 0.2
    d = torch.randn(n_rays, 3, generator=gen)
    d = d / d.norm(dim=1, keepdim=True)
    t = torch.arange(samples_per_ray, dtype=torch.float32) * (math.sqrt(3) / 1024)
    x = origin[:, None, :] + d[:, None, :] * t[None, :, None]
    return x.reshape(-1, 3)[:n].clamp(0.0, 1.0).contiguous()


def _hash_grid_case(name, x, table, table16, grad_out, spec, checks, quick) -> dict:
    from nerfmine.ops import hash_grid as ref_mod
    from nerfmine.ops._triton import hash_grid as tri

    dev = x.device
    n = x.shape[0]
    r = {}
    out = tri.hash_grid_encode_triton(x, table, spec, table_fp16=table16)
    ref16 = ref_mod._hash_grid_encode_torch(x, table16.float(), spec)
    ref32 = ref_mod._hash_grid_encode_torch(x, table, spec)
    r["fwd_rel_err_vs_fp16_table"] = _rel_err(out, ref16)
    r["fwd_rel_err_vs_fp32_table"] = _rel_err(out, ref32)
    checks[f"hash_grid_{name}_fwd"] = (
        r["fwd_rel_err_vs_fp16_table"] < 1e-5 and r["fwd_rel_err_vs_fp32_table"] < 2e-3)
    t_ref = table.clone().requires_grad_(True)
    ref_mod._hash_grid_encode_torch(x, t_ref, spec).backward(grad_out)
    for pre in (True, False):
        g = tri.hash_grid_backward_triton(x, grad_out, spec, pre_reduce=pre)
        err = _rel_err(g, t_ref.grad)
        r[f"bwd_rel_err_pre_reduce_{pre}"] = err
        checks[f"hash_grid_{name}_bwd_pre_reduce_{pre}"] = err < 1e-4
    del t_ref, ref16, ref32, out
    # autograd path (what the field uses)
    t = table.clone().requires_grad_(True)
    o = tri.hash_grid_encode_triton(x, t, spec, table_fp16=table16)
    o.backward(grad_out)
    checks[f"hash_grid_{name}_autograd"] = _rel_err(
        t.grad, tri.hash_grid_backward_triton(x, grad_out, spec)) < 1e-4
    del t, o
    # timings
    r["fwd_ms"] = _bench(lambda: tri._forward(x, table16, spec))
    r["fwd_with_half_copy_ms"] = _bench(
        lambda: tri.hash_grid_encode_triton(x, table, spec))
    for pre in (True, False):
        r[f"bwd_ms_pre_reduce_{pre}"] = _bench(
            lambda pre=pre: tri.hash_grid_backward_triton(x, grad_out, spec, pre_reduce=pre))
    r["bwd_zero_fill_ms"] = _bench(
        lambda: torch.zeros(spec.n_entries, 2, device=dev))
    if not quick:
        r["torch_ref_fwd_ms"] = _bench(
            lambda: ref_mod._encode_levels(x, table16, spec), warmup=3, rep=10)
    # per-level split: dense levels (pre-reduced or not) vs hashed levels
    scales, ints, n_dense = tri._level_params(spec, x.device)
    g = torch.zeros(spec.n_entries, 2, device=dev)
    args = (x, grad_out, g, scales, ints)
    nb = math.ceil(n / tri.BWD_BLOCK)
    r["bwd_dense_plain_ms"] = _bench(lambda: tri._hash_grid_bwd_kernel[(nb, n_dense)](
        *args, n, 0, OUT_STRIDE=spec.output_dim, DENSE=True, BLOCK=tri.BWD_BLOCK, num_warps=4,
        enable_fp_fusion=tri.FP_FUSION))
    nbs = math.ceil(n / tri.BWD_RUNS_BLOCK)
    r["bwd_dense_pre_reduced_ms"] = _bench(
        lambda: tri._hash_grid_bwd_runs_kernel[(nbs, n_dense)](
            *args, n, 0, OUT_STRIDE=spec.output_dim, DENSE=True, BLOCK=tri.BWD_RUNS_BLOCK,
            num_warps=4, enable_fp_fusion=tri.FP_FUSION))
    r["bwd_hashed_ms"] = _bench(
        lambda: tri._hash_grid_bwd_kernel[(nb, spec.n_levels - n_dense)](
            *args, n, n_dense, OUT_STRIDE=spec.output_dim, DENSE=False, BLOCK=tri.BWD_BLOCK,
            num_warps=4, enable_fp_fusion=tri.FP_FUSION))
    r["bwd_hashed_pre_reduced_ms"] = _bench(
        lambda: tri._hash_grid_bwd_runs_kernel[(nbs, spec.n_levels - n_dense)](
            *args, n, n_dense, OUT_STRIDE=spec.output_dim, DENSE=False,
            BLOCK=tri.BWD_RUNS_BLOCK, num_warps=4, enable_fp_fusion=tri.FP_FUSION))
    print(f"hash_grid[{name}]: " + ", ".join(
        f"{k}={v:.4g}" for k, v in r.items()), flush=True)
    return r


def bench_hash_grid(n: int, res: dict, checks: dict, quick: bool) -> None:
    from nerfmine.ops import hash_grid as ref_mod
    from nerfmine.ops._triton import hash_grid as tri

    spec = ref_mod.HashGridSpec()
    dev = "cuda"
    gen = torch.Generator().manual_seed(0)
    # Correctness with features of scale 1 (the real init, U(+-1e-4), would hide errors).
    table = (torch.rand(spec.n_entries, 2, generator=gen) * 2 - 1).to(dev)
    table16 = table.half()
    inputs = {
        "uniform": torch.rand(n, 3, generator=gen).to(dev),
        "ray_ordered": _ray_ordered_points(n, 128, gen).to(dev),
    }
    grad_out = torch.randn(n, spec.output_dim, generator=gen).to(dev)
    out_info = {
        "n_points": n, "n_levels": spec.n_levels, "log2_table_size": spec.log2_table_size,
        "n_entries": spec.n_entries, "n_dense_levels": sum(spec.dense_levels),
        "fwd_block": tri.FWD_BLOCK, "bwd_block": tri.BWD_BLOCK,
        "bwd_runs_block": tri.BWD_RUNS_BLOCK, "fp_fusion": tri.FP_FUSION,
    }
    for name, x in inputs.items():
        out_info[name] = _hash_grid_case(name, x, table, table16, grad_out, spec, checks,
                                         quick)
    # Does the packed-pair atomic become one vector atomic? (sm_90: atom/red .v2.f32)
    try:
        x = inputs["uniform"][:256]
        scales, ints, n_dense = tri._level_params(spec, x.device)
        g = torch.zeros(spec.n_entries, 2, device=dev)
        ck = tri._hash_grid_bwd_kernel[(1, 1)](
            x, grad_out[:256], g, scales, ints, 256, n_dense, OUT_STRIDE=spec.output_dim,
            DENSE=False, BLOCK=tri.BWD_BLOCK, num_warps=4)
        ptx = ck.asm["ptx"]
        atoms = sorted(set(re.findall(r"\b(?:atom|red)\.[\w.]+", ptx)))
        out_info["bwd_atomic_instructions"] = atoms
        print("atomic instructions in the hashed backward:", atoms, flush=True)
    except Exception as err:  # informational only
        out_info["bwd_atomic_instructions"] = f"unavailable: {err!r}"
    res["hash_grid"] = out_info


def bench_sh(n: int, res: dict, checks: dict) -> None:
    from nerfmine.ops.sh import sh_encode

    gen = torch.Generator().manual_seed(1)
    d = torch.randn(n, 3, generator=gen)
    d = (d / d.norm(dim=1, keepdim=True)).cuda()
    out = sh_encode(d, 4, backend="triton")
    ref = sh_encode(d, 4, backend="torch")
    r = {"n": n, "max_abs_err": (out - ref).abs().max().item()}
    checks["sh"] = r["max_abs_err"] < 1e-5
    r["triton_ms"] = _bench(lambda: sh_encode(d, 4, backend="triton"))
    r["torch_ms"] = _bench(lambda: sh_encode(d, 4, backend="torch"))
    res["sh"] = r
    print("sh:", r, flush=True)


def bench_mlp(n: int, res: dict, checks: dict) -> None:
    """The fused inference MLP against the layer-by-layer fp16 path (cuBLAS) it replaces."""
    from nerfmine.field import ModelConfig, NGPField
    from nerfmine.ops.mlp import ngp_mlp_forward
    from nerfmine.ops.sh import sh_encode

    gen = torch.Generator().manual_seed(2)
    field = NGPField(ModelConfig(), seed=2).cuda()
    with torch.no_grad():
        for w in field.mlp_parameters():
            w.mul_(3.0)
    weights = field.mlp_parameters()
    enc = (torch.randn(n, field.spec.output_dim, generator=gen) * 0.5).cuda().half()
    d = torch.randn(n, 3, generator=gen)
    sh = sh_encode((d / d.norm(dim=1, keepdim=True)).cuda(), 4, backend="triton")
    out = ngp_mlp_forward(enc, sh, weights, backend="triton")
    ref = ngp_mlp_forward(enc, sh, weights, backend="torch")
    r = {"n": n, "max_abs_err": (out - ref).abs().max().item(),
         "ref_max_abs": ref.abs().max().item()}
    checks["mlp_inference"] = r["max_abs_err"] < 1e-2 * max(1.0, r["ref_max_abs"])
    r["triton_fused_ms"] = _bench(lambda: ngp_mlp_forward(enc, sh, weights, backend="triton"))
    r["torch_layers_fp16_ms"] = _bench(
        lambda: ngp_mlp_forward(enc, sh, weights, backend="torch"))
    res["mlp_inference"] = r
    print("mlp_inference:", r, flush=True)


def bench_adam(res: dict, checks: dict) -> None:
    from nerfmine.ops.adam import adam_step
    from nerfmine.ops.hash_grid import HashGridSpec

    n = HashGridSpec().n_entries * 2
    gen = torch.Generator().manual_seed(2)
    p = torch.randn(n, generator=gen).cuda()
    g = torch.randn(n, generator=gen).cuda()
    g[torch.rand(n, generator=gen).cuda() < 0.5] = 0.0  # half the entries untouched
    m = torch.zeros(n, device="cuda")
    v = torch.zeros(n, device="cuda")
    h = p.half()  # the lookup copy is in sync before the first step
    step = torch.tensor(1, device="cuda")
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-15, weight_decay_l2=1e-6,
              skip_zero_grad=True)
    st_t = [t.clone() for t in (p, m, v)]
    st_r = [t.clone() for t in (p, m, v)]
    h_r = h.clone()
    for s in (1, 2, 3):
        adam_step(st_t[0], g, st_t[1], st_t[2], torch.tensor(s, device="cuda"), param_fp16=h,
                  backend="triton", **kw)
        adam_step(st_r[0], g, st_r[1], st_r[2], s, param_fp16=h_r, backend="torch", **kw)
    r = {"n_params": n, "param_rel_err": _rel_err(st_t[0], st_r[0]),
         "exp_avg_rel_err": _rel_err(st_t[1], st_r[1]),
         "exp_avg_sq_rel_err": _rel_err(st_t[2], st_r[2]),
         "fp16_copy_in_sync": bool(torch.equal(h, st_t[0].half()))}
    zero = g == 0
    r["skip_exact"] = bool(torch.equal(st_t[0][zero], p[zero]) and not st_t[1][zero].any())
    checks["adam"] = (r["param_rel_err"] < 1e-5 and r["exp_avg_rel_err"] < 1e-5
                      and r["exp_avg_sq_rel_err"] < 1e-5 and r["fp16_copy_in_sync"]
                      and r["skip_exact"])
    r["triton_ms"] = _bench(lambda: adam_step(p, g, m, v, step, param_fp16=h, backend="triton",
                                              **kw))
    r["triton_no_skip_no_fp16_ms"] = _bench(lambda: adam_step(
        p, g, m, v, step, lr=1e-2, weight_decay_l2=0.0, backend="triton"))
    # A mining step's table gradient is sparser: only ~10 % of the entries touched.
    g_sparse = g * (torch.rand(n, device="cuda") < 0.2)
    r["triton_10pct_touched_ms"] = _bench(lambda: adam_step(p, g_sparse, m, v, step,
                                                            param_fp16=h, backend="triton", **kw))
    r["torch_ref_ms"] = _bench(lambda: adam_step(p, g, m, v, step, param_fp16=h, backend="torch",
                                                 **kw))
    try:
        param = torch.nn.Parameter(p.clone())
        param.grad = g.clone()
        opt = torch.optim.Adam([param], lr=1e-2, betas=(0.9, 0.99), eps=1e-15, fused=True)
        r["torch_optim_adam_fused_ms"] = _bench(opt.step)
    except Exception as err:
        r["torch_optim_adam_fused_ms"] = f"unavailable: {err!r}"
    res["adam"] = r
    print("adam:", r, flush=True)


def bench_mining(n: int, res: dict, checks: dict) -> None:
    """The miner's Triton selection against the sort-based torch reference on the same keys,
    and one mining call (importance, b, draw, tau) with each backend."""
    from nerfmine.miner import HardSampleMiner
    from nerfmine.ops._triton import mining as tm
    from nerfmine.ops.mining import select_by_keys

    gen = torch.Generator(device="cuda").manual_seed(4)
    grad = torch.randn(n, 4, device="cuda", generator=gen)
    grad = grad * torch.rand(n, 1, device="cuda", generator=gen) ** 8
    grad[torch.rand(n, device="cuda", generator=gen) < 0.3] = 0.0  # terminated samples
    n_samples = torch.tensor(int(0.97 * n), device="cuda")  # the rest is padding
    b = torch.tensor(int(0.14 * n), device="cuda")
    size = -(-int(0.16 * n) // 256) * 256
    ws = tm.MineWorkspace(n, torch.device("cuda"))
    seed = torch.tensor([7], device="cuda")
    g, _ = tm.importance_and_keys(grad, n_samples, seed, ws)
    out = tm.select_drawn(b, size, ws)
    ref_idx, ref_mask = select_by_keys(tm.code_to_key(ws.codes), b, size)
    ref_g = HardSampleMiner().importance(grad, n_samples)
    r = {"n": n, "b": int(b), "size": size, "selection_equal": bool(torch.equal(out, ref_idx)),
         "drawn": int(ref_mask.sum()), "importance_rel_err": _rel_err(g, ref_g)}
    checks["mining"] = r["selection_equal"] and r["drawn"] == int(b) and (
        r["importance_rel_err"] < 1e-6)
    for backend in ("torch", "triton"):
        miner = HardSampleMiner().cuda()
        miner.tau_bar.fill_(7.0)
        r[f"mine_{backend}_ms"] = _bench(lambda m=miner, be=backend: m.mine(
            grad, n_samples, n, gen, size=size, host_copy=False, backend=be))
    res["mining"] = r
    print("mining:", r, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="path of the JSON report")
    ap.add_argument("--log2-n", type=int, default=18, help="points per pass (default 2^18)")
    ap.add_argument("--quick", action="store_true", help="skip the slow torch timings")
    ap.add_argument("--sections", default=None,
                    help="comma-separated subset of hash_grid,sh,mlp_inference,adam,mining "
                         "(default all)")
    args = ap.parse_args(argv)

    res: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
                 "torch": torch.__version__}
    checks: dict = {}
    errors: dict = {}
    if not torch.cuda.is_available():
        print("kernels_gpu.py needs a CUDA GPU", file=sys.stderr)
        res["errors"] = {"setup": "no CUDA device"}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
        return 1
    import triton

    res["triton"] = triton.__version__
    res["gpu"] = torch.cuda.get_device_name()
    res["capability"] = list(torch.cuda.get_device_capability())
    cap = "".join(map(str, res["capability"]))
    print(f"GPU: {res['gpu']} (sm_{cap}), torch {torch.__version__}, triton {triton.__version__}",
          flush=True)
    n = 1 << args.log2_n
    sections = (
        ("hash_grid", lambda: bench_hash_grid(n, res, checks, args.quick)),
        ("sh", lambda: bench_sh(n, res, checks)),
        ("mlp_inference", lambda: bench_mlp(n, res, checks)),
        ("adam", lambda: bench_adam(res, checks)),
        ("mining", lambda: bench_mining(n, res, checks)),
    )
    if args.sections:
        wanted = args.sections.split(",")
        unknown = sorted(set(wanted) - {name for name, _ in sections})
        if unknown:
            ap.error(f"--sections: unknown {unknown}")
        sections = tuple((name, fn) for name, fn in sections if name in wanted)
    for name, fn in sections:
        t0 = time.time()
        try:
            fn()
        except Exception:
            errors[name] = traceback.format_exc()
            print(f"[{name}] FAILED:\n{errors[name]}", file=sys.stderr, flush=True)
        finally:
            torch.cuda.empty_cache()
        res.setdefault("section_seconds", {})[name] = round(time.time() - t0, 2)
    res["checks"] = checks
    res["errors"] = errors
    ok = all(checks.values()) and not errors
    res["ok"] = ok
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print("checks:", checks)
    print("OK" if ok else "FAILED", "->", args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
