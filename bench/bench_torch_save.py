#!/usr/bin/python3
"""torch.save / torch.load bandwidth for the model state bench_ckpt writes.

    /usr/bin/python3 bench/bench_torch_save.py PATH [repeats=3]

Builds the tensors of insitra's checkpoint for bench_ckpt's ~100M-parameter
model: the parameters of tests/reference/insitra_reference.py's
InsitraReference (seq_len 16, 8 in/out features, d_model 1024, 8 layers,
16 heads), plus two AdamW moment tensors of the same shape per parameter, all
float32 (the moments filled with small random values, the second moment
positive). Then, `repeats` times: remove the previous file and os.sync()
(untimed), and time torch.save of the dict into PATH followed by os.fsync of
the file; the time up to the end of torch.save alone (the data is then in the
page cache, not on disk) is reported as well. Then times torch.load of PATH
`repeats` times as it is (pages cached: the save wrote them) and `repeats`
times after dropping its pages with posix_fadvise(POSIX_FADV_DONTNEED).
MB/s = file size / median time, MB = 1e6 bytes. Removes PATH at the end.

Use Debian's python3 (/usr/bin/python3, python3-torch). The last line printed
is key=value pairs starting with "torch_save".
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
from insitra_reference import InsitraReference  # noqa: E402

# bench_ckpt.c's config_io: T, F_in, F_out, C, L, H.
T, F_IN, F_OUT, C, L, H = 16, 8, 8, 1024, 8, 16


def drop_pages(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("repeats", type=int, nargs="?", default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("repeats must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = InsitraReference(T, F_IN, F_OUT, C, L, H, causal=False)
    params = model.state_dict()
    exp_avg, exp_avg_sq = {}, {}
    for name, p in params.items():
        exp_avg[name] = torch.randn_like(p) * 1e-3
        exp_avg_sq[name] = exp_avg[name] * exp_avg[name]
    state = {"model": params, "optim_m": exp_avg, "optim_v": exp_avg_sq}
    n_params = sum(p.numel() for p in params.values())
    tensor_bytes = 3 * 4 * n_params

    save_s, save_nofsync_s = [], []
    for _ in range(args.repeats):
        if os.path.exists(args.path):
            os.unlink(args.path)
        os.sync()
        t0 = time.perf_counter()
        with open(args.path, "wb") as f:
            torch.save(state, f)
            f.flush()
            t1 = time.perf_counter()
            os.fsync(f.fileno())
        t2 = time.perf_counter()
        save_nofsync_s.append(t1 - t0)
        save_s.append(t2 - t0)
    nbytes = os.path.getsize(args.path)

    load_cached_s, load_dropped_s = [], []
    for dropped in (False, True):
        for _ in range(args.repeats):
            if dropped:
                drop_pages(args.path)
            t0 = time.perf_counter()
            loaded = torch.load(args.path)
            dt = time.perf_counter() - t0
            (load_dropped_s if dropped else load_cached_s).append(dt)
    same = all(torch.equal(loaded["optim_v"][k], exp_avg_sq[k]) for k in exp_avg_sq)
    del loaded
    os.unlink(args.path)

    def mbps(times):
        return nbytes / statistics.median(times) * 1e-6

    def join(times):
        return ",".join("%.3f" % t for t in times)

    print("torch_save torch=%s params=%d tensor_bytes=%d bytes=%d repeats=%d "
          "save_s=%.3f save_s_all=%s save_MBps=%.1f save_nofsync_s=%.3f save_nofsync_MBps=%.1f "
          "load_cached_s=%.3f load_cached_s_all=%s load_cached_MBps=%.1f "
          "load_dropped_s=%.3f load_dropped_s_all=%s load_dropped_MBps=%.1f "
          "verified=%d"
          % (torch.__version__, n_params, tensor_bytes, nbytes, args.repeats,
             statistics.median(save_s), join(save_s), mbps(save_s),
             statistics.median(save_nofsync_s), mbps(save_nofsync_s),
             statistics.median(load_cached_s), join(load_cached_s), mbps(load_cached_s),
             statistics.median(load_dropped_s), join(load_dropped_s), mbps(load_dropped_s),
             int(same)))


if __name__ == "__main__":
    main()
