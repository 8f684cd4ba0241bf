"""Algorithmic datasets `a op b mod p` (Power et al. 2022) and token-pair models that learn them.

    pairs, labels = make_pairs("x/y", 97)        # every (a, b), b != 0 for division
    train_idx, test_idx = split(len(labels), 0.5, seed=0)
    model = EmbedMLP(97, width=256, depth=2)     # or Transformer(97, depth=2, d_model=128, heads=4)
    logits = model(pairs[train_idx])             # (n, p): the class is the answer c

Power et al.'s full task list: the nine polynomial/arithmetic operations mod p, "x//y_or_x-y"
((x // y) mod p if y is odd, else (x - y) mod p, with // integer floor division), and three on
the group S5 of the 120 permutations of 5 elements, whose tokens index the permutations in
`itertools.permutations(range(5))` order and whose product is composition, (x*y)(i) = x(y(i)):
"s5:x*y", "s5:x*y*x^-1" (conjugation) and "s5:x*y*x". `vocab_size` is p, or 120 for S5.

Both models take a batch of (a, b) token pairs. The transformer reads the sequence [a, b, =] and
predicts from the last position, which carries the same information as Power's
"a <op> b = c" with one fixed operation.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn


def _inverse_table(p: int) -> torch.Tensor:
    """inv[b] = b^-1 mod p (Fermat), inv[0] = 0 (never used: division excludes b = 0)."""
    return torch.tensor([pow(b, p - 2, p) if b else 0 for b in range(p)])


OPERATIONS = {
    "x+y": lambda a, b, p: a + b,
    "x-y": lambda a, b, p: a - b,
    "x*y": lambda a, b, p: a * b,
    "x/y": lambda a, b, p: a * _inverse_table(p)[b],
    "x^2+y^2": lambda a, b, p: a**2 + b**2,
    "x^2+xy+y^2": lambda a, b, p: a**2 + a * b + b**2,
    "x^2+xy+y^2+x": lambda a, b, p: a**2 + a * b + b**2 + a,
    "x^3+xy": lambda a, b, p: a**3 + a * b,
    "x^3+xy^2+y": lambda a, b, p: a**3 + a * b**2 + b,
    "x//y_or_x-y": lambda a, b, p: torch.where(b % 2 == 1, a // b.clamp(min=1), a - b),
}


@functools.cache
def _s5():
    """(perms (120, 5), inverse index (120,), table[i, j] = index of perm_i o perm_j)."""
    perms = torch.tensor(list(itertools.permutations(range(5))))
    index = {tuple(q.tolist()): i for i, q in enumerate(perms)}
    compose = perms[:, None, :].expand(-1, 120, -1).gather(2, perms[None].expand(120, -1, -1))
    table = torch.tensor([[index[tuple(r)] for r in row] for row in compose.tolist()])
    inverse = torch.tensor([index[tuple(q.argsort().tolist())] for q in perms])
    return perms, inverse, table


def _s5_op(fn):
    def op(a, b, p):
        _, inverse, table = _s5()
        return fn(a, b, table, inverse)
    return op


S5_OPERATIONS = {
    "s5:x*y": _s5_op(lambda a, b, mul, inv: mul[a, b]),
    "s5:x*y*x^-1": _s5_op(lambda a, b, mul, inv: mul[mul[a, b], inv[a]]),
    "s5:x*y*x": _s5_op(lambda a, b, mul, inv: mul[mul[a, b], a]),
}
OPERATIONS.update(S5_OPERATIONS)
S5_ORDER = 120


def vocab_size(operation: str, p: int) -> int:
    """The number of operand (and answer) tokens: 120 for S5 tasks, else the modulus p."""
    return S5_ORDER if operation in S5_OPERATIONS else p


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def make_pairs(operation: str, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair (a, b) of tokens (Z_p x Z_p, b != 0 for x/y; S5 x S5) as an (n, 2) int64
    tensor, and labels."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}; allowed: {', '.join(OPERATIONS)}")
    if operation == "x/y" and not is_prime(p):
        raise ValueError(f"x/y needs a prime modulus (every b != 0 invertible); got {p}")
    n = vocab_size(operation, p)
    a, b = torch.cartesian_prod(torch.arange(n), torch.arange(n)).unbind(1)
    if operation == "x/y":
        a, b = a[b != 0], b[b != 0]
    # int64 holds p^3 + p^3 + p for any p below ~1e6, so reducing once at the end is exact.
    labels = OPERATIONS[operation](a, b, p) % n
    return torch.stack([a, b], 1), labels


def split(n: int, train_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of range(n): round(train_fraction * n) train indices (at least one
    on each side), the rest test."""
    n_train = min(max(round(train_fraction * n), 1), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:n_train], order[n_train:]


class EmbedMLP(nn.Module):
    """Shared token embedding of a and b, concatenated, then `depth` ReLU layers of `width`.

    The forward pass computes `self.mlp(self.embed(pairs).flatten(1))` (see `reference_forward`)
    with the first Linear folded into the lookup:
    concat(E[a], E[b]) @ W1^T + b1 == (E @ W1a^T + b1)[a] + (E @ W1b^T)[b], W1 = [W1a | W1b].
    The product runs on the p-row table instead of the n pairs and the first layer needs no
    gradient with respect to its n inputs: at p = 97, 3763 pairs, width 256 that removes 15% of
    a full-batch step's matmul work. The tables are rebuilt from the same parameters on every
    call, so the parameters, their gradients and the optimizer state are the plain model's up to
    float rounding.
    """

    def __init__(self, p: int, width: int = 256, depth: int = 2, embed_dim: int = 32):
        super().__init__()
        self.embed = nn.Embedding(p, embed_dim)
        layers, d_in = [], 2 * embed_dim
        for _ in range(depth):
            # In place: ReLU's backward needs only its output, and this saves a (n, width)
            # buffer and a pass over it per layer.
            layers += [nn.Linear(d_in, width), nn.ReLU(inplace=True)]
            d_in = width
        self.mlp = nn.Sequential(*layers, nn.Linear(d_in, p))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        first = self.mlp[0]
        table = self.embed.weight
        w_a, w_b = first.weight.chunk(2, dim=1)
        hidden = (F.embedding(pairs[:, 0], torch.addmm(first.bias, table, w_a.T))
                  + F.embedding(pairs[:, 1], table @ w_b.T))
        return self.mlp[1:](hidden)

    def reference_forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """The same function, unfolded (the tests compare the two)."""
        return self.mlp(self.embed(pairs).flatten(1))


class Block(nn.Module):
    """Causal self-attention and a 4x ReLU MLP, each added to the residual stream.

    With layer_norm, LayerNorm follows each residual add (post-LN, as in Power et al.'s code);
    without it the block is Nanda et al.'s.
    """

    def __init__(self, d_model: int, heads: int, layer_norm: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.ReLU(), nn.Linear(4 * d_model, d_model)
        )
        self.norm1 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.norm2 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        n, _, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=2)
        if last_only:  # only the "=" position is read out: the last block skips the others
            q, x = q[:, -1:], x[:, -1:]

        def heads(z):
            return z.reshape(n, -1, self.heads, d // self.heads).transpose(1, 2)

        # The last query sees every key, so it needs no mask.
        att = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=not last_only)
        x = self.norm1(x + self.proj(att.transpose(1, 2).reshape(n, -1, d)))
        return self.norm2(x + self.mlp(x))


class Transformer(nn.Module):
    """Decoder-only transformer over [a, b, =], learned positions; logits from the last token."""

    def __init__(self, p: int, depth: int = 2, d_model: int = 128, heads: int = 4,
                 layer_norm: bool = True):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.p = p
        self.embed = nn.Embedding(p + 1, d_model)  # token p is "="
        self.pos = nn.Parameter(torch.randn(3, d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(d_model, heads, layer_norm) for _ in range(depth))
        self.unembed = nn.Linear(d_model, p)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        equals = torch.full_like(pairs[:, :1], self.p)
        x = self.embed(torch.cat([pairs, equals], 1)) + self.pos
        for block in self.blocks[:-1]:
            x = block(x)
        return self.unembed(self.blocks[-1](x, last_only=True)[:, -1])
