"""
Writes the parity fixtures that tests/test_parity.c checks the C library
against:

    /usr/bin/python3 tests/reference/make_parity_fixture.py tests/reference

produces parity.bin (bidirectional attention) and parity_causal.bin (causal
mask, another seed). Rerun it only when the model or the format changes, and
commit the .bin files with the change.

What a fixture holds, for one small model and one batch (x, y):
  dims/*          the model dims and the batch size B            (int64 scalars)
  hparams/*       optimizer settings of the training run        (float64/int64 scalars)
  param/<name>    every parameter before training, by C tensor name (float32)
  x, y            the batch, (B,T,F_in) and (B,T,F_out)         (float32)
  out             the forward output for x, (B,T,F_out)         (float32)
  loss            mean squared error of out against y           (float64 scalar)
  grad/<name>     gradient of that loss for every parameter     (float32)
  train/loss      loss before each of the training steps        (float64, (steps,))
  train/grad_norm global gradient L2 norm before clipping       (float64, (steps,))
  train/lr        learning rate used by each step               (float64, (steps,))

File format (version 1), all integers and floats little-endian:

  header  16 bytes: magic b"INSFIXT\\0" (8 bytes), u32 version, u32 record count
  record  112-byte header, then the data:
            name    64 bytes, ASCII, NUL-padded (at most 63 characters)
            dtype   u32: 1 = float32, 2 = float64, 3 = int64
            ndim    u32: 0 (scalar) .. 4
            shape   4 x i64, the first ndim used, the rest 0
            nbytes  i64: element count (product of shape; 1 for a scalar) x element size
            data    nbytes bytes, row-major, then zero bytes up to a multiple of 8

Every header and data block starts at a multiple of 8 bytes, so a reader that
loads the whole file into malloc'd memory can use the data in place.

The model is float32, like the C code; torch.set_num_threads(1) makes the
numbers independent of the machine's core count. The parameters are not the
library's initialisation: LayerNorm gains and all biases are drawn away from
1 and 0 and the weights are larger than N(0, 0.02), so that a kernel that
ignored a gain, a bias or the attention pattern would show up in the result.
"""
import math
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from insitra_reference import InsitraReference, lr_at, mse_loss, param_groups  # noqa: E402

MAGIC = b"INSFIXT\0"
VERSION = 1
NAME_BYTES = 64
MAX_NDIM = 4
DTYPE_FLOAT32, DTYPE_FLOAT64, DTYPE_INT64 = 1, 2, 3
_PACK = {DTYPE_FLOAT32: ("f", 4), DTYPE_FLOAT64: ("d", 8), DTYPE_INT64: ("q", 8)}

# One configuration for both fixtures; only causal and the seed differ.
DIMS = dict(batch=3, seq_len=8, in_features=5, out_features=3, d_model=16, n_layers=2,
            n_heads=4)
HPARAMS = dict(lr=1e-2, min_lr=1e-3, warmup_steps=3, decay_steps=10, beta1=0.9, beta2=0.95,
               eps=1e-8, weight_decay=0.1, max_grad_norm=1.0, steps=10)


class FixtureWriter:
    def __init__(self):
        self.records = []  # bytes of each record, header and padded data

    def add(self, name, dtype, shape, values):
        """values: a flat list of numbers, row-major, len = prod(shape)."""
        name_bytes = name.encode("ascii")
        assert len(name_bytes) < NAME_BYTES, f"record name too long: {name}"
        assert len(shape) <= MAX_NDIM
        assert name not in (n for n, _ in self.records), f"duplicate record {name}"
        numel = math.prod(shape)
        assert len(values) == numel, f"{name}: {len(values)} values for shape {shape}"
        code, size = _PACK[dtype]
        header = struct.pack(f"<{NAME_BYTES}sII{MAX_NDIM}qq", name_bytes, dtype, len(shape),
                             *(list(shape) + [0] * (MAX_NDIM - len(shape))), numel * size)
        data = struct.pack(f"<{numel}{code}", *values)
        data += b"\0" * (-len(data) % 8)
        self.records.append((name, header + data))

    def add_tensor(self, name, t):
        """A float32 tensor, stored with its shape."""
        t = t.detach().to(torch.float32).contiguous()
        self.add(name, DTYPE_FLOAT32, tuple(t.shape), t.flatten().tolist())

    def add_scalar(self, name, value, dtype):
        self.add(name, dtype, (), [value])

    def write(self, path):
        blob = MAGIC + struct.pack("<II", VERSION, len(self.records))
        blob += b"".join(r for _, r in self.records)
        with open(path, "wb") as f:
            f.write(blob)
        return len(blob)


@torch.no_grad()
def perturb_params(model):
    """Moves every parameter away from the values that hide bugs (gains of 1,
    biases of 0, tiny weights that make attention uniform and GELU linear).
    Draws from the generator torch.manual_seed set, so it is reproducible."""
    for name, p in model.named_parameters():
        if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")):  # LayerNorm gains
            p.copy_(1.0 + 0.2 * torch.randn_like(p))
        elif name.endswith(".bias") or name == "pos_embed":
            p.copy_(0.2 * torch.randn_like(p))
        else:  # Linear weights (out, in): unit-variance outputs for unit inputs
            p.copy_(torch.randn_like(p) / math.sqrt(p.shape[1]))


def make_fixture(path, causal, seed):
    torch.manual_seed(seed)
    d, hp = DIMS, HPARAMS
    model = InsitraReference(d["seq_len"], d["in_features"], d["out_features"], d["d_model"],
                             d["n_layers"], d["n_heads"], causal=causal)
    perturb_params(model)
    B, T = d["batch"], d["seq_len"]
    x = torch.randn(B, T, d["in_features"])
    y = torch.randn(B, T, d["out_features"])

    w = FixtureWriter()
    for k, v in d.items():
        w.add_scalar(f"dims/{k}", v, DTYPE_INT64)
    w.add_scalar("dims/causal", int(causal), DTYPE_INT64)
    for k, v in hp.items():
        w.add_scalar(f"hparams/{k}", v, DTYPE_INT64 if isinstance(v, int) else DTYPE_FLOAT64)

    initial = {k: v.clone() for k, v in model.state_dict().items()}
    for name, t in initial.items():
        w.add_tensor(f"param/{name}", t)
    w.add_tensor("x", x)
    w.add_tensor("y", y)

    # One forward and backward of this batch, from the initial parameters.
    model.zero_grad(set_to_none=False)
    out = model(x)
    loss = mse_loss(out, y)
    loss.backward()
    w.add_tensor("out", out)
    w.add_scalar("loss", loss.item(), DTYPE_FLOAT64)
    for name, p in model.named_parameters():
        w.add_tensor(f"grad/{name}", p.grad)

    # Training on the same batch, starting again from the initial parameters.
    # foreach=False keeps torch on its per-tensor loop, the textbook AdamW
    # that insitra_adamw_update reproduces.
    model.load_state_dict(initial)
    opt = torch.optim.AdamW(param_groups(model, hp["weight_decay"]), lr=hp["lr"],
                            betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"], foreach=False)
    losses, norms, lrs = [], [], []
    for step in range(hp["steps"]):
        opt.zero_grad(set_to_none=False)
        loss = mse_loss(model(x), y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=hp["max_grad_norm"])
        lr = lr_at(step, hp["lr"], hp["min_lr"], hp["warmup_steps"], hp["decay_steps"])
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        losses.append(loss.item())
        norms.append(norm.item())
        lrs.append(lr)
    w.add("train/loss", DTYPE_FLOAT64, (hp["steps"],), losses)
    w.add("train/grad_norm", DTYPE_FLOAT64, (hp["steps"],), norms)
    w.add("train/lr", DTYPE_FLOAT64, (hp["steps"],), lrs)

    size = w.write(path)
    print(f"{path}: {len(w.records)} records, {size} bytes, causal={causal}, "
          f"loss {losses[0]:.6f} -> {losses[-1]:.6f}")


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUTPUT_DIR")
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)
    make_fixture(os.path.join(out_dir, "parity.bin"), causal=False, seed=1234)
    make_fixture(os.path.join(out_dir, "parity_causal.bin"), causal=True, seed=5678)


if __name__ == "__main__":
    main()
