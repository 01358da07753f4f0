#!/usr/bin/env python3
"""The largest sequence length PyTorch trains at a given width, found by trying.

    python3 bench/bench_torch_long.py [--config M] [--batch 1] [--memory-gib X]
        [--grain 512] [--cap T] [--max-tries 8] [--try-seconds 30]
        --mode eager:START [--mode checkpoint:START ...]

The model is bench_torch_gpu.py's (insitra's model, written to be fast: bf16
autocast, flash attention through scaled_dot_product_attention, fused AdamW,
gradient clipping) at the config's width, depth and heads, with model.seq_len
= T and B samples per step. Modes:

  * eager: the model as it is, not compiled (torch.compile per T costs about
    a minute each, more than the search can spend);
  * checkpoint: each block under torch.utils.checkpoint (non-reentrant), the
    counterpart of insitra's training.recompute: block.

A try at T builds the model, optimizer and a store of B samples on the GPU
and runs two training steps (the second is timed); it fails on
torch.cuda.OutOfMemoryError. Everything is freed before the next try. The search
starts at START (e.g. insitra's answer for the same recompute mode),
rounded down to the grain, and gallops: up by grain, 2 grain, 4 grain, ...
while tries succeed (down likewise while they fail), then bisects the
bracket down to the grain. It stops early when a successful step took more
than --try-seconds (the step time, not memory, then bounds what can be
tried) or after --max-tries.

--memory-gib X allocates a ballast tensor of (free memory - X GiB) first, so
the model has X GiB as on a smaller card (bench_gpu_step's --memory-gib is
the same). Peak memory is torch.cuda.max_memory_allocated less the ballast.

Prints one line per try ("try mode=... seq_len=... ok=...") and, per mode,
  torch_long mode=eager batch=1 memory_gib=4 max_seq_len=... bound=... step_ms=... peak_mem_gib=...
with bound = memory (a try ran out of memory one grain above), limit (--cap
reached), time (a step took longer than --try-seconds), tries (--max-tries
spent before the bracket closed), or none (nothing fitted).
"""
import argparse
import gc
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch_gpu import (BETAS, CONFIGS, EPS, GRAD_CLIP, LR,  # noqa: E402
                             WEIGHT_DECAY, FastInsitraModel, param_groups)

GIB = float(1 << 30)


def forward(model, x, use_checkpoint):
    """The model's forward, its blocks optionally under activation checkpointing."""
    if not use_checkpoint:
        return model(x)
    r = model.embed(x) + model.pos_embed
    for block in model.blocks:
        r = checkpoint(block, r, use_reentrant=False)
    return model.head(model.ln_f(r))


def try_seq_len(T, args, use_checkpoint, ballast_bytes, dev):
    """Two training steps at T. Returns (ok, step_s, peak_bytes)."""
    _, feat, C, L, H, _ = CONFIGS[args.config]
    B = args.batch
    state = {}
    try:
        torch.cuda.reset_peak_memory_stats(dev)
        with torch.device(dev):
            model = state["model"] = FastInsitraModel(T, feat, feat, C, L, H)
        opt = state["opt"] = torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS,
                                               eps=EPS, fused=True)
        x = state["x"] = torch.rand(B, T, feat, device=dev) * 2 - 1
        y = state["y"] = torch.sin(3 * x)
        step_s = 0.0
        for _ in range(2):
            torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                out = forward(model, x, use_checkpoint)
            loss = F.mse_loss(out.float(), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            torch.cuda.synchronize(dev)
            step_s = time.perf_counter() - t0
            del out, loss
        ok = True
    except torch.cuda.OutOfMemoryError:
        ok, step_s = False, 0.0
    peak = torch.cuda.max_memory_allocated(dev) - ballast_bytes
    state.clear()
    gc.collect()
    torch.cuda.empty_cache()
    return ok, step_s, peak


def search(args, mode, start, ballast_bytes, dev):
    grain, cap = args.grain, args.cap
    T = max(grain, min(cap, start // grain * grain))
    lo = hi = None  # largest T that trained, smallest that did not
    step = grain
    best = (0.0, 0)
    bound = "tries"
    for _ in range(args.max_tries):
        ok, step_s, peak = try_seq_len(T, args, mode == "checkpoint", ballast_bytes, dev)
        print(f"try mode={mode} seq_len={T} ok={int(ok)} step_ms={1e3 * step_s:.1f} "
              f"peak_mem_gib={peak / GIB:.3f}", flush=True)
        if ok:
            lo, best = T, (step_s, peak)
        else:
            hi = T
        if lo is not None and hi is not None:
            if hi - lo <= grain:
                bound = "memory"
                break
            T = (lo + hi) // 2 // grain * grain
            if T <= lo:
                T = lo + grain
            if T >= hi:
                bound = "memory"
                break
            continue
        if ok:
            if T >= cap:
                bound = "limit"
                break
            if step_s > args.try_seconds:
                bound = "time"
                break
            T, step = min(cap, lo + step), step * 2
        else:
            if T <= grain:
                bound = "none"
                break
            T, step = max(grain, hi - step), step * 2
    return lo or 0, bound, best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="M",
                    help="width, depth and heads from this config (default M)")
    ap.add_argument("--batch", type=int, default=1, help="samples per step (default 1)")
    ap.add_argument("--memory-gib", type=float, default=0.0,
                    help="leave the model this much of the device (default: all of it)")
    ap.add_argument("--grain", type=int, default=512, help="T is searched in multiples of this")
    ap.add_argument("--cap", type=int, default=1 << 20, help="largest T tried")
    ap.add_argument("--max-tries", type=int, default=8, help="tries per mode")
    ap.add_argument("--try-seconds", type=float, default=30.0,
                    help="stop going up once a step takes longer than this")
    ap.add_argument("--mode", action="append", required=True,
                    help="eager:START or checkpoint:START, START the first T tried")
    args = ap.parse_args()
    modes = []
    for m in args.mode:
        name, _, start = m.partition(":")
        if name not in ("eager", "checkpoint") or not start.isdigit():
            ap.error(f"--mode wants eager:START or checkpoint:START, got '{m}'")
        modes.append((name, int(start)))
    if args.batch < 1 or args.grain < 1 or args.cap < args.grain or args.max_tries < 1:
        ap.error("need --batch >= 1, --grain >= 1, --cap >= --grain, --max-tries >= 1")
    if not torch.cuda.is_available():
        sys.exit("bench_torch_long: no CUDA device visible to torch")
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    torch.set_float32_matmul_precision("high")
    torch.manual_seed(0)
    ballast = None
    ballast_bytes = 0
    if args.memory_gib > 0:
        free, _ = torch.cuda.mem_get_info(dev)
        ballast_bytes = int(free - args.memory_gib * GIB)
        if ballast_bytes <= 0:
            sys.exit(f"bench_torch_long: --memory-gib {args.memory_gib} but only {free / GIB:.3f} GiB free")
        ballast = torch.empty(ballast_bytes, dtype=torch.uint8, device=dev)
    for name, start in modes:
        T, bound, (step_s, peak) = search(args, name, start, ballast_bytes, dev)
        print(f"torch_long mode={name} config={args.config} batch={args.batch} "
              f"memory_gib={args.memory_gib:g} max_seq_len={T} bound={bound} grain={args.grain} "
              f"step_ms={1e3 * step_s:.1f} peak_mem_gib={peak / GIB:.3f} "
              f"torch_version={torch.__version__}", flush=True)
    del ballast


if __name__ == "__main__":
    main()
