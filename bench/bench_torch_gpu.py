#!/usr/bin/env python3
"""Training-step benchmark of insitra's model in PyTorch on GPU, tuned for speed.

    python3 bench/bench_torch_gpu.py S|M|L [--warmup N] [--steps N]
    torchrun --standalone --nproc_per_node 2 bench/bench_torch_gpu.py M
    torchrun --standalone --nproc_per_node 4 bench/bench_torch_gpu.py L --fsdp

The same model as tests/reference/insitra_reference.py (pre-LayerNorm
encoder: linear token embedding plus learned positions; blocks of LN, fused
qkv, attention, projection, residual, then LN, fc to 4C, GELU (tanh), fc back
to C, residual; final LN, linear head; mean squared error), with the same
parameter names, shapes, initialisation rule, AdamW parameter groups and
learning-rate schedule. It is written the way one would write it to be fast:

  * attention through F.scaled_dot_product_attention (flash attention);
  * torch.autocast to bfloat16 with float32 master weights and optimizer state;
  * torch.compile of the model (compilation happens in the warmup steps);
  * torch.optim.AdamW(fused=True), clip_grad_norm_(1.0);
  * the 64-sample store lives on the GPU; each step draws B indices with
    torch.randint on the GPU and gathers the batch there.

Under torchrun with WORLD_SIZE > 1 each rank runs on cuda:LOCAL_RANK and the
model is wrapped in DistributedDataParallel (NCCL, gradient_as_bucket_view)
before it is compiled, so that compiled backward still overlaps the gradient
all-reduce bucket by bucket. Every rank trains B samples per step (weak
scaling, as insitra's bench_gpu_step does).

With --fsdp the model is sharded with FSDP2 instead (ZeRO-3 style: parameters,
gradients and optimizer state sharded over the ranks), under torchrun with any
number of processes, one included (a single process without torchrun uses a
one-rank process group of its own):

  * each block is compiled on its own (torch.compile of the block, fullgraph),
    before sharding, so FSDP2's all-gather and reduce-scatter hooks run
    eagerly around the compiled blocks; the embedding, positions, final
    LayerNorm and head stay eager;
  * torch.distributed.fsdp.fully_shard on every block, then on the root
    (which takes the remaining parameters), with
    MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32): FSDP
    casts the gathered parameters and the root's inputs to bfloat16 and
    reduces gradients in float32 into float32 sharded parameters, so there is
    no autocast; the last block stays unsharded after its forward, as its
    backward comes next;
  * the optimizer (AdamW fused, same groups) is built on the sharded
    parameters, and clip_grad_norm_ works on the sharded gradients;
  * the loss is computed in float32 from the bfloat16 output.

The last line's mode= says which ran: single (one process, no wrapper), ddp
or fsdp2.

A step is timed from the host: torch.cuda.synchronize (and a barrier across
ranks) before it, torch.cuda.synchronize after it; a step's time is the
slowest rank's and the figure is the median over the timed steps. Rank 0
prints one line of key=value pairs last:

  torch config=S gpus=1 step_ms=... tok_s=... mfu=... peak_mem_gib=... params=...

tok_s counts every rank's tokens (B x T x world per step); FLOPs per token
are 6 x params + 12 x L x C x T and MFU divides by 989 TFLOP/s per GPU (dense
BF16 of an H100/H200 SXM). peak_mem_gib is torch.cuda.max_memory_allocated
on rank 0 over the timed steps; reserved_mem_gib is what the caching
allocator held from the device at the end.
"""
import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
from insitra_reference import (LAYERNORM_EPS, InsitraReference, lr_at,  # noqa: E402
                               param_groups)

# name: (T, F_in = F_out, C, L, H, B per GPU), as in bench_gpu_step.c.
CONFIGS = {
    "S": (256, 16, 128, 4, 4, 16),
    "M": (1024, 64, 768, 12, 12, 16),
    "L": (1024, 64, 1024, 24, 16, 16),
}
DEFAULT_STEPS = {"S": 30, "M": 20, "L": 20}
DEFAULT_WARMUP = 10
CAPACITY = 64  # samples in the store (data.capacity in bench_gpu_step.c)
# insitra's optimizer defaults (docs/config.md), which bench_gpu_step keeps.
WEIGHT_DECAY = 0.01
LR, MIN_LR, LR_WARMUP, LR_DECAY = 1e-3, 1e-5, 100, 10000
BETAS, EPS = (0.9, 0.95), 1e-8
GRAD_CLIP = 1.0
PEAK_FLOPS_PER_GPU = 989e12  # dense BF16, H100/H200 SXM
GIB = float(1 << 30)


class Attention(nn.Module):
    """Fused qkv projection, multi-head attention, output projection.

    qkv's 3C output features are [q | k | v]; head h takes features
    h*hs:(h+1)*hs of each (hs = C / H), as in the reference."""

    def __init__(self, d_model, n_heads, causal):
        super().__init__()
        assert d_model % n_heads == 0, "n_heads must divide d_model"
        self.n_heads = n_heads
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        B, T, C = x.shape
        H = self.n_heads
        # (B,T,3C) -> (3,B,H,T,hs): feature s*C + h*hs + d is part s, head h.
        q, k, v = self.qkv(x).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)
        # Default scale 1/sqrt(hs), as the reference's explicit softmax.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B,H,T,hs)
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


class FastInsitraModel(nn.Module):
    """x (B,T,F_in) -> (B,T,F_out). Parameter names and shapes are those of
    InsitraReference, so its state_dict loads into this model unchanged."""

    def __init__(self, seq_len, in_features, out_features, d_model, n_layers, n_heads,
                 causal=False):
        super().__init__()
        self.seq_len = seq_len
        self.embed = nn.Linear(in_features, d_model)
        self.pos_embed = nn.Parameter(torch.zeros(seq_len, d_model))
        self.blocks = nn.ModuleList([Block(d_model, n_heads, causal) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d_model, eps=LAYERNORM_EPS)
        self.head = nn.Linear(d_model, out_features)
        # The reference's initialisation rule goes by parameter name and
        # len(self.blocks), both of which this model shares with it.
        InsitraReference.init_like_insitra(self)

    def forward(self, x):
        r = self.embed(x) + self.pos_embed  # (B,T,C); positions broadcast over B
        for block in self.blocks:
            r = block(r)
        return self.head(self.ln_f(r))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", choices=sorted(CONFIGS))
    ap.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                    help=f"untimed steps, compilation included (default {DEFAULT_WARMUP})")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps (default 30 for S, 20 for M and L)")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                    help="bf16: autocast to bfloat16 (default); fp32: no autocast")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode (default, reduce-overhead, max-autotune, ...)")
    ap.add_argument("--no-compile", action="store_true", help="run the model eagerly")
    ap.add_argument("--fsdp", action="store_true",
                    help="shard with FSDP2 (fully_shard per block and root, bf16 params, fp32 "
                         "reduction) instead of DDP; per-block torch.compile")
    args = ap.parse_args()
    if args.steps is None:
        args.steps = DEFAULT_STEPS[args.config]
    if args.warmup < 0 or args.steps < 1:
        ap.error("need --warmup >= 0 and --steps >= 1")
    return args


def shard_fsdp2(model, bf16, compile_blocks, compile_mode):
    """FSDP2 over all ranks: each block compiled (optional), then
    fully_shard on each block and on the root. Returns the sharded model."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if compile_blocks:
        # Compiled before sharding: fully_shard then hooks the compiled
        # wrapper, so its collectives run eagerly between compiled blocks.
        # The blocks share one class and shapes, so they share the code.
        for i, block in enumerate(model.blocks):
            model.blocks[i] = torch.compile(block, mode=compile_mode, fullgraph=True)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                              reduce_dtype=torch.float32)
    n = len(model.blocks)
    for i, block in enumerate(model.blocks):
        # The last block's backward comes right after its forward: keep it
        # gathered rather than gathering it again.
        fully_shard(block, mp_policy=mp, reshard_after_forward=i < n - 1)
    fully_shard(model, mp_policy=mp)
    return model


def main():
    args = parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_torch_gpu: no CUDA device visible to torch")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    fsdp = args.fsdp
    distributed = world > 1 or fsdp  # FSDP2 needs a process group, even of one rank
    mode = "fsdp2" if fsdp else "ddp" if world > 1 else "single"
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local_rank)
    torch.cuda.set_device(dev)
    if distributed:
        if "MASTER_ADDR" in os.environ:  # torchrun
            dist.init_process_group("nccl", device_id=dev)
        else:  # one process started on its own
            dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1,
                                    device_id=dev)

    bf16 = args.precision == "bf16"
    if bf16:
        # Every matmul runs in bfloat16 under autocast; this only keeps
        # inductor from warning that TF32 is off.
        torch.set_float32_matmul_precision("high")

    T, feat, C, L, H, B = CONFIGS[args.config]
    torch.manual_seed(0)  # the same initial weights on every rank
    with torch.device(dev):  # parameters are created and initialised on the GPU
        model = FastInsitraModel(T, feat, feat, C, L, H)
    model.train()
    params = sum(p.numel() for p in model.parameters())

    net = model
    if fsdp:
        # fully_shard replaces the parameters with sharded ones (DTensor):
        # the optimizer is built on those, after sharding.
        model = net = shard_fsdp2(model, bf16, not args.no_compile, args.compile_mode)
    elif distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank],
                                                  output_device=local_rank,
                                                  gradient_as_bucket_view=True)
    if not args.no_compile and not fsdp:
        net = torch.compile(net, mode=args.compile_mode)
    opt = torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS, eps=EPS,
                            fused=True)
    # FSDP2 casts parameters and inputs to bfloat16 itself.
    autocast = bf16 and not fsdp

    # The store: x uniform in [-1, 1), y = sin(3x) feature by feature; a
    # different store on every rank, as every insitra rank pushes its own.
    gen = torch.Generator(device=dev)
    gen.manual_seed(1000 + rank)
    xs = torch.rand(CAPACITY, T, feat, device=dev, generator=gen) * 2 - 1
    ys = torch.sin(3 * xs)
    torch.cuda.manual_seed(2000 + rank)  # the batch indices

    def step(i):
        lr = lr_at(i, LR, MIN_LR, LR_WARMUP, LR_DECAY)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, CAPACITY, (B,), device=dev)
        x, y = xs[idx], ys[idx]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
            out = net(x)
        loss = F.mse_loss(out.float(), y)  # float32 loss on every path
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        return loss.detach()

    def align():
        torch.cuda.synchronize()
        if distributed:
            dist.barrier()
            torch.cuda.synchronize()

    times = []
    first_step_s = 0.0
    loss = None
    warmup_peak = 0
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            warmup_peak = torch.cuda.max_memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        align()
        t0 = time.perf_counter()
        loss = step(i)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if i == 0:
            first_step_s = dt
        if i >= args.warmup:
            times.append(dt)
    peak = torch.cuda.max_memory_allocated(dev)
    reserved = torch.cuda.memory_reserved(dev)
    final_loss = loss.item()

    if distributed:
        # The slowest rank's time for each step, as bench_gpu_step does.
        t = torch.tensor(times, dtype=torch.float64, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times = t.tolist()

    finite = math.isfinite(final_loss)
    if rank == 0 and finite:
        step_s = statistics.median(times)
        tokens = B * T * world
        flops_per_token = 6 * params + 12 * L * C * T
        tok_s = tokens / step_s
        mfu = tok_s * flops_per_token / (PEAK_FLOPS_PER_GPU * world)
        gpu = torch.cuda.get_device_name(dev).replace(" ", "_")
        print(f"torch config={args.config} gpus={world} step_ms={1e3 * step_s:.3f} "
              f"tok_s={tok_s:.1f} mfu={mfu:.4f} peak_mem_gib={peak / GIB:.3f} "
              f"params={params} step_ms_min={1e3 * min(times):.3f} "
              f"step_ms_mean={1e3 * statistics.fmean(times):.3f} warmup={args.warmup} "
              f"steps={args.steps} tokens_per_step={tokens} flops_per_token={flops_per_token} "
              f"reserved_mem_gib={reserved / GIB:.3f} "
              f"warmup_peak_mem_gib={warmup_peak / GIB:.3f} first_step_s={first_step_s:.2f} "
              f"precision={args.precision} "
              f"compile={'off' if args.no_compile else args.compile_mode} gpu={gpu} "
              f"loss={final_loss:.6g} torch_version={torch.__version__} mode={mode}",
              flush=True)
    if distributed:
        dist.destroy_process_group()
    if not finite:
        sys.exit(f"bench_torch_gpu: rank {rank}: loss is {final_loss} after "
                 f"{args.warmup + args.steps} steps")


if __name__ == "__main__":
    main()
