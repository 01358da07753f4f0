"""
docs/model.md is enough to use a checkpoint: this test reads the page's
constants and tensor table (nothing else of insitra), builds the model in
PyTorch from them, loads the checkpoint tests/model_doc_case.c wrote (h5py),
applies the normalisation and residual the page describes, and must predict
what insitra_predict predicted for the same inputs.

    python3 test_model_doc.py docs/model.md DIR

Exit 0 passed, 1 failed, 77 skipped (python3-torch or python3-h5py missing).
"""
import glob
import math
import os
import re
import struct
import sys

try:
    import h5py
    import numpy as np
    import torch
except ImportError as e:  # CI installs them (tools/check.sh); elsewhere, skip
    print(f"SKIP: {e.name} is not installed (Debian: python3-torch python3-h5py)")
    sys.exit(77)

TOLERANCE = 1e-4  # of the largest increment: float32 against float32, different summation orders


def parse_doc(path):
    """The constants (name -> value text) and the tensor table (name -> shape symbols)."""
    consts, tensors = {}, {}
    section = None
    for line in open(path, encoding="utf-8"):
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        if section == "Constants":
            m = re.match(r"^\| `(\w+)` \| `([^`]*)` \|", line)
            if m:
                consts[m.group(1)] = m.group(2)
        elif section == "Tensors":
            m = re.match(r"^\| `([\w.<>]+)` \| \(([^)]*)\) \|", line)
            if m:
                tensors[m.group(1)] = [s.strip() for s in m.group(2).split(",")]
    return consts, tensors


def stored_config(text):
    """The two-level YAML insitra dumps: {"model.d_model": "16", ...}."""
    out, section = {}, ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.strip().partition(":")
        value = value.strip().strip('"').strip("'")
        if not line.startswith(" "):
            section = key
            if value:
                out[key] = value
        else:
            out[f"{section}.{key}"] = value
    return out


def size(symbol, dims):
    """'3C' -> 3 * C, 'F_in' -> F_in."""
    m = re.fullmatch(r"(\d*)(\w+)", symbol)
    return (int(m.group(1)) if m.group(1) else 1) * dims[m.group(2)]


class DocModel(torch.nn.Module):
    """The model of docs/model.md, parameters named and shaped by its table."""

    def __init__(self, consts, table, dims):
        super().__init__()
        self.c, self.dims = consts, dims
        self.shapes = {}
        for name, shape in table.items():
            names = [name.replace("<l>", str(l)) for l in range(dims["L"])] if "<l>" in name else [name]
            for n in names:
                self.shapes[n] = tuple(size(s, dims) for s in shape)
        self.p = {}

    def load(self, h5):
        have = {}
        h5["model"].visititems(lambda n, o: have.__setitem__(n, o) if isinstance(o, h5py.Dataset) else None)
        missing = sorted(set(self.shapes) - set(have))
        extra = sorted(set(have) - set(self.shapes))
        assert not missing and not extra, f"tensors: missing {missing}, not in docs/model.md {extra}"
        for n, shape in self.shapes.items():
            t = torch.from_numpy(np.asarray(have[n], dtype=np.float32))
            assert tuple(t.shape) == shape, f"{n}: the file has {tuple(t.shape)}, the page says {shape}"
            self.p[n] = t

    def linear(self, x, name):
        assert self.c["linear"] == "y = x W^T + b"
        return x @ self.p[name + ".weight"].T + self.p[name + ".bias"]

    def layernorm(self, x, name):
        eps = float(self.c["layernorm_eps"])
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), self.p[name + ".weight"],
                                              self.p[name + ".bias"], eps)

    def attention(self, a, l):
        B, T, C = a.shape
        H = self.dims["H"]
        D = C // H
        qkv = self.linear(a, f"blocks.{l}.attn.qkv")                       # (B,T,3C)
        order = re.findall(r"\w", self.c["qkv_rows"])                      # ['q', 'k', 'v']
        parts = dict(zip(order, qkv.split(C, dim=2)))
        assert self.c["qkv_head_rows"] == "h*D"                            # head h: features h*D..
        q, k, v = (parts[n].view(B, T, H, D).transpose(1, 2) for n in "qkv")
        scale = eval(self.c["attention_scale"], {"sqrt": math.sqrt, "D": D})
        s = (q @ k.transpose(-2, -1)) * scale
        if self.dims["causal"]:
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        o = torch.softmax(s, dim=-1) @ v                                    # (B,H,T,D)
        return self.linear(o.transpose(1, 2).reshape(B, T, C), f"blocks.{l}.attn.proj")

    def forward(self, x):
        r = self.linear(x, "embed") + self.p["pos_embed"]
        gelu = self.c["gelu"]
        for l in range(self.dims["L"]):
            r = r + self.attention(self.layernorm(r, f"blocks.{l}.ln1"), l)
            h = torch.nn.functional.gelu(self.linear(self.layernorm(r, f"blocks.{l}.ln2"), f"blocks.{l}.mlp.fc"),
                                         approximate=gelu)
            r = r + self.linear(h, f"blocks.{l}.mlp.proj")
        return self.linear(self.layernorm(r, "ln_f"), "head")


def coefficients(h5, consts, T, f_in, f_out):
    """The float32 maps of the page's 'Normalisation' section."""
    floor = float(consts["std_floor"])
    if "normalize" not in h5:
        return (np.zeros(f_in, np.float32), np.ones(f_in, np.float32),
                np.zeros(f_out, np.float32), np.ones(f_out, np.float32))
    g = h5["normalize"]
    count = int(g.attrs["samples"]) * T

    def std(mean, m2):
        s = np.sqrt(m2 / count) if count > 0 else np.ones_like(mean)
        s = np.maximum(s, floor * np.abs(mean))
        return np.where(s > 0, s, 1.0)

    xm, ym = np.asarray(g["x_mean"]), np.asarray(g["y_mean"])
    xs, ys = std(xm, np.asarray(g["x_m2"])), std(ym, np.asarray(g["y_m2"]))
    return xm.astype(np.float32), (1.0 / xs).astype(np.float32), ym.astype(np.float32), ys.astype(np.float32)


def main():
    doc, directory = sys.argv[1], sys.argv[2]
    consts, table = parse_doc(doc)
    assert consts and table, f"{doc}: no constants or tensor table found"
    files = sorted(glob.glob(os.path.join(directory, "step-*.h5")))
    assert files, f"no checkpoint in {directory}"
    with open(os.path.join(directory, "case.bin"), "rb") as f:
        n, T, f_in, f_out = struct.unpack("<4i", f.read(16))
        x = np.frombuffer(f.read(4 * n * T * f_in), dtype="<f4").reshape(n, T, f_in)
        want = np.frombuffer(f.read(4 * n * T * f_out), dtype="<f4").reshape(n, T, f_out)
    with h5py.File(files[-1], "r") as h5:
        cfg_text = h5.attrs["config"]
        cfg = stored_config(cfg_text.decode() if isinstance(cfg_text, bytes) else str(cfg_text))
        dims = {"T": int(cfg["model.seq_len"]), "F_in": int(cfg["model.in_features"]),
                "F_out": int(cfg["model.out_features"]), "C": int(cfg["model.d_model"]),
                "L": int(cfg["model.n_layers"]), "H": int(cfg["model.n_heads"]),
                "causal": cfg["model.causal"] == "true"}
        dims["D"] = dims["C"] // dims["H"]
        assert (dims["T"], dims["F_in"], dims["F_out"]) == (T, f_in, f_out)
        model = DocModel(consts, table, dims)
        model.load(h5)
        x_mean, x_inv, y_mean, y_std = coefficients(h5, consts, T, f_in, f_out)
    if cfg.get("model.residual") == "true":
        text = cfg.get("model.residual_inputs", "")
        r = [int(v) for v in text.split(",")] if text else list(range(f_out))
    else:
        r = [-1] * f_out
    xt = torch.from_numpy(x.copy())
    with torch.no_grad():
        out = model((xt - torch.from_numpy(x_mean)) * torch.from_numpy(x_inv)).numpy()
    increment = out * y_std + y_mean
    base = np.stack([x[..., i] if i >= 0 else np.zeros_like(x[..., 0]) for i in r], axis=-1)
    got = base + increment
    err = np.max(np.abs((got - base) - (want - base))) / np.max(np.abs(want - base))
    total = np.max(np.abs(got - want)) / np.max(np.abs(want))
    print(f"model of docs/model.md vs insitra_predict: increment error {err:.2e} (tolerance {TOLERANCE:.0e}), "
          f"prediction error {total:.2e}; {len(model.p)} tensors, residual inputs {r}, "
          f"x_mean {x_mean.tolist()}")
    return 0 if err <= TOLERANCE and total <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
