#!/usr/bin/python3
"""Training-step benchmark of the PyTorch twin of insitra's model.

    /usr/bin/python3 bench/bench_torch.py S|M [warmup_steps] [timed_steps] [--threads N]

Runs the same model as bench_step (tests/reference/insitra_reference.py, the
reference the correctness tests compare against) on the same configuration
and times one full training step: draw a batch from a 64-sample store,
zero_grad, forward, MSE loss, backward, clip_grad_norm_(1.0), AdamW step with
the same parameter groups. The last line printed is key=value pairs in the
same form as bench_step's, with "torch" as the first word.

bench/run_step_bench.sh runs it with the newest torch it finds on the
machine (the strongest peer: a pip wheel with oneDNN and MKL where there is
one, else Debian's python3-torch). The result line names torch's version and
its BLAS (torch_blas, from torch.__config__.show()).
"""
import argparse
import math
import os
import re
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
from insitra_reference import InsitraReference, lr_at, mse_loss, param_groups  # noqa: E402

# name: (T, F_in, F_out, C, L, H, B), the same table as bench_step.c.
CONFIGS = {
    "S": (256, 16, 16, 128, 4, 4, 16),
    "M": (256, 16, 16, 512, 8, 8, 8),
}
CAPACITY = 64  # samples in the store, as data.capacity in bench_step.c
# insitra's optimizer defaults (lib/config.c), which bench_step leaves as
# they are. They change the numbers, not the work of a step; the learning
# rate is still recomputed every step as insitra does.
WEIGHT_DECAY = 0.01
LR, MIN_LR, LR_WARMUP, LR_DECAY = 1e-3, 1e-5, 100, 10000
BETAS, EPS = (0.9, 0.95), 1e-8


def blas_info():
    """torch's BLAS as its build configuration names it (BLAS_INFO=...), and oneDNN's presence."""
    found = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    blas = found.group(1) if found else "unknown"
    onednn = "yes" if torch.backends.mkldnn.is_available() else "no"
    return blas, onednn


def default_threads():
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else os.cpu_count()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", choices=sorted(CONFIGS))
    ap.add_argument("warmup", type=int, nargs="?", default=3)
    ap.add_argument("steps", type=int, nargs="?", default=10)
    ap.add_argument("--threads", type=int, default=default_threads(),
                    help="torch.set_num_threads (default: OMP_NUM_THREADS or all cores)")
    args = ap.parse_args()
    if args.warmup < 0 or args.steps < 1 or args.threads < 1:
        ap.error("need warmup >= 0, steps >= 1, threads >= 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    T, f_in, f_out, C, L, H, B = CONFIGS[args.config]
    model = InsitraReference(T, f_in, f_out, C, L, H, causal=False)
    model.train()
    opt = torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS, eps=EPS)
    params = sum(p.numel() for p in model.parameters())

    # Synthetic store: x uniform in [-1, 1), y a smooth function of x.
    xs = torch.rand(CAPACITY, T, f_in) * 2 - 1
    ys = torch.sin(3 * xs[:, :, torch.arange(f_out) % f_in])

    def step(t):
        lr = lr_at(t, LR, MIN_LR, LR_WARMUP, LR_DECAY)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, CAPACITY, (B,))
        x, y = xs[idx], ys[idx]
        opt.zero_grad(set_to_none=True)
        loss = mse_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    times, cpu_times = [], []
    loss = float("nan")
    for i in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step(i)
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
            cpu_times.append(time.process_time() - c0)
    if not math.isfinite(loss):
        sys.exit("bench_torch: loss is not finite")

    blas, onednn = blas_info()
    step_s = statistics.median(times)
    tokens = B * T
    flops_per_token = 6 * params + 12 * L * C * T
    tokens_per_s = tokens / step_s
    print(f"torch config={args.config} threads={torch.get_num_threads()} "
          f"warmup={args.warmup} steps={args.steps} params={params} "
          f"tokens_per_step={tokens} flops_per_token={flops_per_token} "
          f"step_ms={1e3 * step_s:.3f} step_ms_min={1e3 * min(times):.3f} "
          f"step_ms_mean={1e3 * statistics.fmean(times):.3f} "
          f"tokens_per_s={tokens_per_s:.1f} "
          f"gflops={flops_per_token * tokens_per_s * 1e-9:.2f} "
          f"cpu_ms={1e3 * statistics.median(cpu_times):.3f} loss={loss:.6g} "
          f"torch_version={torch.__version__} torch_blas={blas} torch_onednn={onednn}")


if __name__ == "__main__":
    main()
