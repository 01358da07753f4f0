"""
tools/insitra_torch.py on the export of a run at parallel.tp = 2 with
data.normalize running (test_tp_ckpt's "write ... norm"): its predictions of
the inputs the run predicted (x.bin) equal the trainer's (pred.bin, whole
samples) within 1e-5 of the largest value. The export's /normalize counts
each sample once per token slice, cp x tp of them: a reader dividing by cp
alone gets the standard deviations wrong by sqrt(tp).

    python3 test_tp_torch.py <tools dir> <dir of the write step>
"""
import os
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, sys.argv[1])
import insitra_torch  # noqa: E402

TOL = 1e-5


def main():
    d = sys.argv[2]
    path = os.path.join(d, "export.h5")
    with h5py.File(path, "r") as f:
        seq_len, fi, fo = (int(f.attrs[k]) for k in ("seq_len", "in_features", "out_features"))
    x = np.fromfile(os.path.join(d, "x.bin"), dtype=np.float32).reshape(-1, seq_len, fi)
    want = np.fromfile(os.path.join(d, "pred.bin"), dtype=np.float32).reshape(-1, seq_len, fo)
    torch.set_num_threads(1)
    model = insitra_torch.load(path)
    with torch.inference_mode():
        got = model(torch.from_numpy(x)).numpy()
    err = abs(got - want).max() / max(abs(want).max(), 1e-30)
    ok = model.normalizes and err <= TOL
    print(f"  {path}: normalisation {'on' if model.normalizes else 'OFF'}, err {err:.3e}  tol {TOL:g}  "
          f"{'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
