"""
PyTorch inference on the model bench_surrogate exported (the same weights,
through tools/insitra_torch.py): one forward of n samples timed reps times
after warmup, in torch.inference_mode; on the GPU in bf16 autocast and
compiled (torch.compile, the faster of the modes asked for), on the CPU in
fp32 with the given threads (compiled too where torch.compile exists).
Prints the median and, last, "RESULT config=... torch_ms=...".

    python3 bench_torch_surrogate.py EXPORT --device cpu|cuda --n N --threads T
        [--reps R] [--warmup W] [--modes "default reduce-overhead"] [--no-compile] [--config NAME]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import insitra_torch  # noqa: E402


def time_forward(fn, x, reps, warmup, cuda):
    for _ in range(warmup):
        fn(x)
    if cuda:
        torch.cuda.synchronize()
    ms = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x)
        if cuda:
            torch.cuda.synchronize()
        ms.append(1e3 * (time.perf_counter() - t0))
    ms.sort()
    return ms[len(ms) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("export")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--modes", default="default reduce-overhead")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--config", default="?")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    cuda = a.device == "cuda"
    model = insitra_torch.load(a.export, device=a.device)
    d = model.dims
    x = torch.randn(a.n, d["seq_len"], d["in_features"], device=a.device)
    compiled = hasattr(torch, "compile") and not a.no_compile
    results = {}
    with torch.inference_mode():
        modes = a.modes.split() if compiled else ["eager"]
        for mode in modes:
            fn = torch.compile(model, mode=mode) if compiled else model
            if cuda:
                def run(t, f=fn):
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        return f(t)
            else:
                run = fn
            results[mode] = time_forward(run, x, a.reps, a.warmup, cuda)
            print(f"torch {mode}: median {results[mode]:.3f} ms", flush=True)
    best = min(results, key=results.get)
    print(f"RESULT config={a.config} device={a.device} n={a.n} threads={a.threads or torch.get_num_threads()} "
          f"torch={torch.__version__} mode={best} torch_ms={results[best]:.4f}")


if __name__ == "__main__":
    main()
