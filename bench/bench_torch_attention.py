#!/usr/bin/env python3
"""One attention layer, forward + backward, through PyTorch's fused SDPA: the peer of
bench_gpu_attention (issue #13).

    python3 bench/bench_torch_attention.py [--B 16] [--H 12] [--T 1024] [--hd 64] [--causal] [--reps 50]

For each SDPA backend (FlashAttention-2 and cuDNN), bf16, two layouts:
  bhtd: q, k, v contiguous (B, H, T, hd) leaf tensors (the kernel alone);
  qkv:  q, k, v viewed out of one (B, T, 3C) tensor and the output merged back
        to (B, T, C), as insitra's layer and bench_torch_gpu.py's model have them.
Median over reps of CUDA-event times of the forward alone and of forward +
backward (backward = the difference). Prints one line per case:
  attention impl=torch-flash layout=bhtd B=.. H=.. T=.. hd=.. causal=.. precision=bf16 fwd_ms=.. bwd_ms=.. total_ms=.. tflops=..
with the FLOP count of bench_gpu_attention (14 B H T^2 hd, halved when causal).
"""
import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(fn, reps):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--B", type=int, default=16)
    p.add_argument("--H", type=int, default=12)
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--hd", type=int, default=64)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--reps", type=int, default=50)
    a = p.parse_args()
    B, H, T, D = a.B, a.H, a.T, a.hd
    C = H * D
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(1)
    qkv = (torch.rand(B, T, 3 * C, device=dev, generator=gen) * 2 - 1).bfloat16().requires_grad_()
    dout = (torch.rand(B, T, C, device=dev, generator=gen) * 2 - 1).bfloat16()
    q0, k0, v0 = (t.transpose(1, 2).contiguous().detach().requires_grad_()
                  for t in qkv.detach().view(B, T, 3, H, D).unbind(2))
    dout_bhtd = dout.view(B, T, H, D).transpose(1, 2).contiguous()
    flop = (0.5 if a.causal else 1.0) * 14.0 * B * H * T * T * D

    def layer_qkv():
        q, k, v = (t.transpose(1, 2) for t in qkv.view(B, T, 3, H, D).unbind(2))
        return F.scaled_dot_product_attention(q, k, v, is_causal=a.causal).transpose(1, 2).reshape(B, T, C)

    def layer_bhtd():
        return F.scaled_dot_product_attention(q0, k0, v0, is_causal=a.causal)

    cases = [("bhtd", layer_bhtd, dout_bhtd, (q0, k0, v0)), ("qkv", layer_qkv, dout, (qkv,))]
    for name, backend in (("torch-flash", SDPBackend.FLASH_ATTENTION), ("torch-cudnn", SDPBackend.CUDNN_ATTENTION)):
        for layout, layer, g, leaves in cases:
            try:
                with sdpa_kernel([backend]):
                    def fwd():  # with autograd recording, as in training
                        layer()

                    def fwd_bwd():
                        for t in leaves:
                            t.grad = None
                        layer().backward(g)

                    f = median_ms(fwd, a.reps)
                    fb = median_ms(fwd_bwd, a.reps)
            except RuntimeError as e:
                print(f"attention impl={name} layout={layout} failed: {str(e).splitlines()[0]}")
                continue
            print(f"attention impl={name} layout={layout} B={B} H={H} T={T} hd={D} causal={int(a.causal)} "
                  f"precision=bf16 fwd_ms={f:.4f} bwd_ms={fb - f:.4f} total_ms={fb:.4f} "
                  f"tflops={flop / (fb * 1e-3) / 1e12:.1f}", flush=True)


if __name__ == "__main__":
    main()
