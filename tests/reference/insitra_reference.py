"""
PyTorch twin of the insitra surrogate model (lib/model.h) and its optimizer
schedule (lib/optimizer.h).

The C library is checked against this module (tests/reference/
make_parity_fixture.py writes the fixtures that tests/test_parity.c reads), and
the benchmarks import it to time an identical model. So it is written to be
*the same computation*, not merely a similar one:

  * state_dict() keys are the C tensor names (insitra_tensor_desc.name), and
    every tensor has the C shape: a Linear weight is (out, in), row-major, as
    in the flat C buffer;
  * attention is spelled out (no fused kernel) so the scaling, the mask and
    the head layout are visible and match insitra_attention_forward
    (lib/cpu/layers.h);
  * GELU is the tanh approximation, LayerNorm eps is 1e-5, the loss is the
    mean squared error over every element.

It depends on torch only.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LAYERNORM_EPS = 1e-5


class SelfAttention(nn.Module):
    """Multi-head self-attention on a fused qkv projection.

    qkv's output features are [q | k | v], each C wide; head h of q uses
    features h*hs:(h+1)*hs (hs = C/H), the same for k and v. In weight terms:
    qkv.weight is (3C, C) and rows h*hs:(h+1)*hs belong to head h of q.
    """

    def __init__(self, seq_len, d_model, n_heads, causal):
        super().__init__()
        assert d_model % n_heads == 0, "n_heads must divide d_model"
        self.n_heads = n_heads
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        if causal:
            # True above the diagonal: token t must not see tokens > t.
            # Not persistent, so it stays out of state_dict (the C model has
            # no such tensor) but still follows .to(device).
            mask = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(diagonal=1)
            self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        H = self.n_heads
        hs = C // H
        qkv = self.qkv(x)                                   # (B,T,3C)
        q, k, v = qkv.split(C, dim=2)                       # 3 x (B,T,C)
        q = q.view(B, T, H, hs).transpose(1, 2)             # (B,H,T,hs)
        k = k.view(B, T, H, hs).transpose(1, 2)             # (B,H,T,hs)
        v = v.view(B, T, H, hs).transpose(1, 2)             # (B,H,T,hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B,H,T,T)
        if self.causal:
            att = att.masked_fill(self.mask[:T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)                        # (B,H,T,T)
        y = att @ v                                         # (B,H,T,hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)    # (B,T,C) heads side by side
        return self.proj(y)                                 # (B,T,C)


class MLP(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))  # (B,T,C)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: LN -> sublayer -> residual add."""

    def __init__(self, seq_len, d_model, n_heads, causal):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, eps=LAYERNORM_EPS)
        self.attn = SelfAttention(seq_len, d_model, n_heads, causal)
        self.ln2 = nn.LayerNorm(d_model, eps=LAYERNORM_EPS)
        self.mlp = MLP(d_model)

    def forward(self, r):
        r = r + self.attn(self.ln1(r))  # (B,T,C)
        r = r + self.mlp(self.ln2(r))   # (B,T,C)
        return r


class InsitraReference(nn.Module):
    """x (B,T,F_in) -> out (B,T,F_out), the model of lib/model.h."""

    def __init__(self, seq_len, in_features, out_features, d_model, n_layers, n_heads,
                 causal=False):
        super().__init__()
        self.seq_len = seq_len
        self.embed = nn.Linear(in_features, d_model)
        self.pos_embed = nn.Parameter(torch.zeros(seq_len, d_model))  # (T,C)
        self.blocks = nn.ModuleList(
            [Block(seq_len, d_model, n_heads, causal) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d_model, eps=LAYERNORM_EPS)
        self.head = nn.Linear(d_model, out_features)
        self.init_like_insitra()

    @torch.no_grad()
    def init_like_insitra(self):
        """The initialisation rule of insitra_model_init_params, drawn from
        torch's generator (so the same distribution, not the same numbers):
        weights and positions N(0, 0.02), the two residual projections of
        every block scaled by 1/sqrt(2L) so the residual stream's variance
        does not grow with depth, biases 0, LayerNorm gains 1."""
        std = 0.02
        residual_std = std / math.sqrt(2 * len(self.blocks))
        for name, p in self.named_parameters():
            if name.endswith("ln1.weight") or name.endswith("ln2.weight") or name == "ln_f.weight":
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            elif name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                p.normal_(0.0, residual_std)
            else:  # embed.weight, pos_embed, qkv, fc, head weights
                p.normal_(0.0, std)

    def forward(self, x):
        B, T, _ = x.shape
        assert T == self.seq_len, "samples must have seq_len tokens"
        r = self.embed(x) + self.pos_embed  # (B,T,C); (T,C) broadcasts over B
        for block in self.blocks:
            r = block(r)
        return self.head(self.ln_f(r))      # (B,T,F_out)


def mse_loss(out, y):
    """The training loss: mean of (out - y)^2 over all B*T*F_out elements."""
    return F.mse_loss(out, y, reduction="mean")


def lr_at(step, lr, min_lr, warmup, decay):
    """Learning rate for 0-based step (insitra_lr_at in lib/optimizer.h):
    linear warmup from lr/warmup to lr over `warmup` steps, then a cosine from
    lr down to min_lr, reached at step `decay` and held after it."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, decay - warmup)
    p = min(max(p, 0.0), 1.0)
    return min_lr + (lr - min_lr) * (1.0 + math.cos(math.pi * p)) / 2.0


def param_groups(model, weight_decay):
    """Two AdamW groups, the split insitra_tensor_desc.decay makes: weight
    decay on the Linear weight matrices only; none on pos_embed, biases or
    LayerNorm parameters (shrinking those toward 0 is not regularisation,
    it just biases the model)."""
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if id(p) in linear_weights else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
