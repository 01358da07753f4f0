"""
The Python half of the insitra_torch test: tools/insitra_torch.py opens the
export, the export of a model with data.normalize and model.residual on
(its /normalize statistics) and the checkpoint that tests/torch_case.c
wrote, and its predictions equal the C surrogate's
(insitra_surrogate_predict, fp32) within 1e-5 of the largest value; the
forward pass exports to ONNX.

    python3 test_insitra_torch.py <tools dir> <case dir>
"""
import os
import sys

import h5py
import torch

sys.path.insert(0, sys.argv[1])
import insitra_torch  # noqa: E402

TOL = 1e-5


def main():
    case = sys.argv[2]
    failures = 0
    with h5py.File(os.path.join(case, "case.h5"), "r") as f:
        x = torch.from_numpy(f["x"][()])
        x_norm = torch.from_numpy(f["x_norm"][()])
        ckpt = f.attrs["checkpoint"]
        ckpt = ckpt.decode() if isinstance(ckpt, bytes) else str(ckpt)
        cases = [("export.h5", x, f["y_export"][()]), ("export-norm.h5", x_norm, f["y_export_norm"][()]),
                 (ckpt, x, f["y_checkpoint"][()])]
    torch.set_num_threads(1)
    for name, xin, want in cases:
        path = name if os.path.isabs(name) else os.path.join(case, name)
        model = insitra_torch.load(path)
        with torch.inference_mode():
            got = model(xin).numpy()
        err = abs(got - want).max() / max(abs(want).max(), 1e-30)
        ok = err <= TOL
        failures += not ok
        print(f"  {os.path.basename(path):24s} normalisation {'on ' if model.normalizes else 'off'} "
              f"err {err:.3e}  tol {TOL:g}  {'ok' if ok else 'FAIL'}")
    # the maps were read, not left as the identity: otherwise the comparison
    # above proves nothing about them
    norm = insitra_torch.load(os.path.join(case, "export-norm.h5"))
    if not norm.normalizes or norm.residual.tolist() != [2, 0] or float(norm.x_mean.abs().min()) < 1.0 \
            or float(norm.x_inv_std.max()) > 0.5:
        print(f"FAIL: the normalising export's maps: normalises {norm.normalizes}, residual "
              f"{norm.residual.tolist()}, x_mean {norm.x_mean.tolist()}, x_inv_std {norm.x_inv_std.tolist()}")
        failures += 1
    onnx = os.path.join(case, "model.onnx")
    insitra_torch.export_onnx(insitra_torch.load(os.path.join(case, "export-norm.h5")), onnx)
    if not os.path.getsize(onnx) > 0:
        print("FAIL: empty ONNX file")
        failures += 1
    print("insitra_torch: " + ("passed" if failures == 0 else f"FAILED ({failures})"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
