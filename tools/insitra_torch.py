"""
insitra_torch: an insitra export or checkpoint as a PyTorch module.

    import insitra_torch
    model = insitra_torch.load("surrogate.h5")      # torch.nn.Module, eval mode
    y = model(x)                                    # x (B, T, F_in) float32 -> (B, T, F_out)

The file is what insitra_export_save writes (an export) or one step-N.h5 of
insitra_checkpoint_save: the parameters under /model with the C tensor names
and shapes, the configuration, and with data.normalize on the feature
statistics /normalize (per-feature means and sums of squared deviations,
docs/model.md, "Normalisation and residual targets"). forward applies the
feature maps as insitra_predict and the C surrogate do, in float32:

    x_hat = (x - x_mean) * x_inv_std
    y     = x[..., r(o)] + (net(x_hat) * y_std + y_mean)   (x term only where model.residual maps o)

The network is the model of lib/model.h: a linear embedding plus learned
positions, pre-LayerNorm blocks (fused-QKV attention, GELU-tanh MLP), a final
LayerNorm and a linear head. Its state_dict keys are the C tensor names.

    python3 insitra_torch.py FILE [--onnx OUT.onnx]

prints the model's shape (and writes the forward pass as ONNX with --onnx).
It depends on torch and h5py only. The C library verifies the files' CRC32Cs;
this module reads them as they are.
"""
import math
import re
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LAYERNORM_EPS = 1e-5
STD_FLOOR = 1e-6  # docs/model.md: a feature's std is floored at STD_FLOOR * |mean|
DIMS = ("seq_len", "in_features", "out_features", "d_model", "n_layers", "n_heads", "causal")


class Attention(nn.Module):
    """Self-attention of a fused qkv (B,T,3C) = [q | k | v], head h at features h*C/H."""

    def __init__(self, d_model, n_heads, causal):
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.scale = 1.0 / math.sqrt(d_model // n_heads)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        B, T, C = x.shape
        H = self.n_heads
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        if hasattr(F, "scaled_dot_product_attention"):  # PyTorch 2: the fused kernels
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            att = (q @ k.transpose(-2, -1)) * self.scale                  # (B,H,T,T)
            if self.causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(diagonal=1)
                att = att.masked_fill(mask, float("-inf"))
            y = F.softmax(att, dim=-1) @ v                                # (B,H,T,hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, d_model, n_heads, causal):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, eps=LAYERNORM_EPS)
        self.attn = Attention(d_model, n_heads, causal)
        self.ln2 = nn.LayerNorm(d_model, eps=LAYERNORM_EPS)
        self.mlp = MLP(d_model)

    def forward(self, r):
        r = r + self.attn(self.ln1(r))
        return r + self.mlp(self.ln2(r))


class Network(nn.Module):
    """x (B,T,F_in) -> (B,T,F_out) in the model's normalised units."""

    def __init__(self, seq_len, in_features, out_features, d_model, n_layers, n_heads, causal):
        super().__init__()
        self.embed = nn.Linear(in_features, d_model)
        self.pos_embed = nn.Parameter(torch.zeros(seq_len, d_model))
        self.blocks = nn.ModuleList([Block(d_model, n_heads, causal) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d_model, eps=LAYERNORM_EPS)
        self.head = nn.Linear(d_model, out_features)

    def forward(self, x):
        r = self.embed(x) + self.pos_embed
        for block in self.blocks:
            r = block(r)
        return self.head(self.ln_f(r))


class Surrogate(nn.Module):
    """The network with the file's feature maps around it: physical units in and out."""

    def __init__(self, dims, maps=None):
        super().__init__()
        self.dims = dict(dims)
        self.net = Network(**self.dims)
        fi, fo = self.dims["in_features"], self.dims["out_features"]
        maps = maps or {}
        f32 = dict(dtype=torch.float32)
        self.register_buffer("x_mean", torch.as_tensor(maps.get("x_mean", np.zeros(fi)), **f32))
        self.register_buffer("x_inv_std", torch.as_tensor(maps.get("x_inv_std", np.ones(fi)), **f32))
        self.register_buffer("y_mean", torch.as_tensor(maps.get("y_mean", np.zeros(fo)), **f32))
        self.register_buffer("y_std", torch.as_tensor(maps.get("y_std", np.ones(fo)), **f32))
        self.register_buffer("residual", torch.as_tensor(maps.get("residual", [-1] * fo), dtype=torch.int64))
        self.normalizes = bool(maps.get("normalize", False))

    def forward(self, x):
        # float32 throughout, in the C library's order of operations
        d = self.net((x - self.x_mean) * self.x_inv_std) * self.y_std + self.y_mean
        has = self.residual >= 0
        base = x.index_select(-1, self.residual.clamp(min=0)) * has
        return torch.where(has, base + d, d)


def _dims(f):
    """The model's dimensions: the export's int64 attributes, or the model
    section of a checkpoint's stored configuration (YAML as insitra dumps it)."""
    if "insitra_export_format" in f.attrs:
        version = int(f.attrs["insitra_export_format"])
        if version != 1:
            raise ValueError(f"export format {version}; this insitra_torch reads format 1")
        dims = {k: int(f.attrs[k]) for k in DIMS}
    elif "insitra_format" in f.attrs:
        text = f.attrs["config"]
        text = text.decode() if isinstance(text, bytes) else str(text)
        section = re.search(r"^model:\n((?:  .*\n?)*)", text, re.M)
        if not section:
            raise ValueError("the checkpoint's configuration has no model section")
        values = dict(re.findall(r"^  (\w+): (\S+)", section.group(1), re.M))
        dims = {k: values[k] for k in DIMS}
        dims = {k: (v == "true") if k == "causal" else int(v) for k, v in dims.items()}
    else:
        raise ValueError("neither an insitra export nor an insitra checkpoint")
    dims["causal"] = bool(dims["causal"])
    return dims


def _stored_config(f):
    """The two-level YAML insitra stores: {"model.d_model": "16", ...}."""
    text = f.attrs["config"]
    text = text.decode() if isinstance(text, bytes) else str(text)
    out, section = {}, ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.strip().partition(":")
        value = value.strip().strip('"').strip("'")
        if not line.startswith(" "):
            section = key
        else:
            out[f"{section}.{key}"] = value
    return out


def _maps(f, cfg, seq_len, fi, fo):
    """The float32 feature maps of docs/model.md: the coefficients from the
    /normalize statistics (in float64, then rounded), the residual map from
    model.residual and model.residual_inputs."""
    maps = {}
    if cfg.get("model.residual") == "true":
        text = cfg.get("model.residual_inputs", "")
        maps["residual"] = [int(v) for v in text.split(",")] if text else list(range(fo))
    if cfg.get("data.normalize", "off") != "off":
        if "normalize" not in f:
            raise ValueError("data.normalize is on but the file has no /normalize")
        g = f["normalize"]
        # "samples" counts each sample once per token slice (parallel.cp x
        # parallel.tp of them, T / (cp tp) values each): T values per feature
        # per whole sample
        slices = int(cfg.get("parallel.cp", "1")) * int(cfg.get("parallel.tp", "1"))
        count = int(g.attrs["samples"]) // slices * seq_len

        def std(mean, m2):
            s = np.sqrt(m2 / count) if count > 0 else np.ones_like(mean)
            s = np.maximum(s, STD_FLOOR * np.abs(mean))
            return np.where(s > 0, s, 1.0)

        xm, ym = np.asarray(g["x_mean"], np.float64), np.asarray(g["y_mean"], np.float64)
        xs, ys = std(xm, np.asarray(g["x_m2"], np.float64)), std(ym, np.asarray(g["y_m2"], np.float64))
        maps.update(normalize=True, x_mean=xm.astype(np.float32), x_inv_std=(1.0 / xs).astype(np.float32),
                    y_mean=ym.astype(np.float32), y_std=ys.astype(np.float32))
    return maps


def load(path, device="cpu"):
    """The surrogate of an insitra export or checkpoint file, in eval mode."""
    with h5py.File(path, "r") as f:
        dims = _dims(f)
        cfg = _stored_config(f)
        model = Surrogate(dims, _maps(f, cfg, dims["seq_len"], dims["in_features"], dims["out_features"]))
        state = {}
        for name in model.net.state_dict():
            if name not in f["model"]:
                raise ValueError(f"'{path}' has no '/model/{name}'")
            state[name] = torch.from_numpy(f["model"][name][()])
        model.net.load_state_dict(state)
    return model.to(device).eval()


def export_onnx(model, path):
    """The forward pass (normalisation included) as ONNX, for a batch of any size."""
    d = model.dims
    x = torch.zeros(1, d["seq_len"], d["in_features"])
    torch.onnx.export(model, x, path, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=14)


def main(argv):
    if len(argv) not in (2, 4) or (len(argv) == 4 and argv[2] != "--onnx"):
        print(__doc__.split("\n\n")[0].strip() + "\nusage: insitra_torch.py FILE [--onnx OUT.onnx]", file=sys.stderr)
        return 2
    model = load(argv[1])
    params = sum(p.numel() for p in model.net.parameters())
    print(f"{argv[1]}: {model.dims}, {params} parameters, normalisation {'on' if model.normalizes else 'off'}")
    if len(argv) == 4:
        export_onnx(model, argv[3])
        print(f"wrote {argv[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
