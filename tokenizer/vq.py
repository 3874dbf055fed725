"""Residual vector quantiser of the SAMTok tokenizer: 2 levels x 256 codes, EMA codebooks, dead-code restart.

Parameter names follow the official ``ResidualQuantizer`` / ``VQEmebedding`` so that the released state
dict loads as is: ``codebooks.{k}.weight`` ([K+1, D]; the last row is a zero padding row),
``codebooks.{k}.cluster_size_ema`` and ``codebooks.{k}.embed_ema``. The padding row is kept for that layout
only: the released decoder never selects it, because it embeds a code -1 as code 0 (``embed_codes``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class VQEmbedding(nn.Embedding):
    """One codebook, updated by exponential moving averages instead of gradients."""

    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, eps: float = 1e-5,
                 restart_unused_codes: bool = True, dead_code_threshold: float = 1.0):
        super().__init__(codebook_size + 1, dim, padding_idx=codebook_size)
        self.codebook_size = codebook_size
        self.decay, self.eps = decay, eps
        self.restart_unused_codes = restart_unused_codes
        # Officially 1.0 with a global batch of 1024 masks (4 per code on average). With small batches
        # every code's EMA count stays below 1 and would be restarted at every step, so it is a knob.
        self.dead_code_threshold = dead_code_threshold
        self.weight.requires_grad_(False)
        self.register_buffer("cluster_size_ema", torch.zeros(codebook_size))
        self.register_buffer("embed_ema", self.weight[:-1].detach().clone())

    @torch.no_grad()
    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared L2) for each row of ``x`` [N, D]."""
        codes = self.weight[:-1].float()
        x = x.float()
        dist2 = x.pow(2).sum(1, keepdim=True) - 2 * x @ codes.t() + codes.pow(2).sum(1)[None]
        return dist2.argmin(1)

    def forward(self, x: torch.Tensor, update: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embeddings, codes)`` for ``x`` [N, D]; with ``update`` the codebook takes one EMA step."""
        idx = self.nearest(x)
        out = super().forward(idx)  # looked up before the update, as officially
        if update:
            self._ema_update(x.detach().float(), idx)
        return out, idx

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        k = self.codebook_size
        onehot = torch.zeros(k, len(x), device=x.device)
        onehot[idx, torch.arange(len(x), device=x.device)] = 1.0
        counts, sums = onehot.sum(1), onehot @ x
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size_ema.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_ema.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        if self.restart_unused_codes:
            self._restart_dead_codes(x)
        n = self.cluster_size_ema.sum()
        size = n * (self.cluster_size_ema + self.eps) / (n + k * self.eps)  # Laplace smoothing
        self.weight[:-1] = (self.embed_ema / size[:, None]).to(self.weight.dtype)

    def _restart_dead_codes(self, x: torch.Tensor) -> None:
        k = self.codebook_size
        if len(x) < k:  # too few vectors in the batch: jittered copies
            reps = -(-k // len(x))
            x = x.repeat(reps, 1)
            x = x + torch.rand_like(x) * (0.01 / x.shape[1] ** 0.5)
        fresh = x[torch.randperm(len(x), device=x.device)[:k]].contiguous()
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(fresh, 0)  # every rank must restart to the same vectors
        alive = (self.cluster_size_ema >= self.dead_code_threshold).float()
        self.embed_ema.mul_(alive[:, None]).add_(fresh * (1 - alive[:, None]))
        self.cluster_size_ema.mul_(alive).add_(1 - alive)


class ResidualQuantizer(nn.Module):
    """Greedy residual quantisation over ``depth`` unshared codebooks."""

    def __init__(self, codebook_size: int, dim: int, depth: int, decay: float = 0.99, eps: float = 1e-5,
                 restart_unused_codes: bool = True, dead_code_threshold: float = 1.0):
        super().__init__()
        self.codebook_size, self.depth = codebook_size, depth
        self.codebooks = nn.ModuleList(
            VQEmbedding(codebook_size, dim, decay, eps, restart_unused_codes, dead_code_threshold)
            for _ in range(depth)
        )

    def forward(self, z: torch.Tensor, update: bool = False):
        """``(quantised z with straight-through gradient, commitment loss, codes [N, depth])`` for ``z`` [N, D]."""
        residual = z.detach().clone()
        total = torch.zeros_like(z)
        losses, codes = [], []
        for book in self.codebooks:
            q, idx = book(residual, update)
            q = q.to(z.dtype)
            residual = residual - q
            total = total + q
            # Officially: mean over levels of ||z - sg(e_1 + ... + e_k)||^2
            losses.append((z - total.detach()).pow(2).mean())
            codes.append(idx)
        quantised = z + (total - z).detach()
        return quantised, torch.stack(losses).mean(), torch.stack(codes, 1)

    @torch.no_grad()
    def kmeans_init(self, z: torch.Tensor, batches: float, iters: int = 20, seed: int = 0) -> None:
        """Initialise every level by k-means on ``z`` [N, D] (level k on the residuals of levels < k).

        ``batches`` is how many training batches ``z`` stands for: the EMA counts are set to the
        per-batch usage, so that EMA updates and dead-code restarts carry on from a consistent state.
        """
        gen = torch.Generator().manual_seed(seed)
        residual = z.detach().float().cpu()
        for book in self.codebooks:
            centroids, counts = _kmeans(residual, book.codebook_size, iters, gen)
            size = counts / batches
            device = book.weight.device
            book.weight[:-1] = centroids.to(device, book.weight.dtype)
            book.cluster_size_ema.copy_(size.to(device))
            book.embed_ema.copy_((centroids * size[:, None]).to(device))
            residual = residual - centroids[_nearest(residual, centroids)]

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the level embeddings of ``codes`` [N, depth], every level included; a code -1 is code 0.

        Quirk kept: the released ``ResidualQuantizer.embed_code`` writes 0 over every -1 *in place* before
        the lookup, so its later ``!= -1`` filter keeps every level and ``(c1, -1)`` decodes exactly as
        ``(c1, 0)`` (and the caller's code tensor is overwritten). The published numbers come from that, so
        the same embedding is computed here, on a copy: the caller's ``codes`` are left as they are.
        Any other code outside 0..K-1 is an error (``MaskTokenizer.check_codes`` has already made every bad
        level-2 code -1; officially K would pick the zero padding row and anything else fails the lookup).
        """
        codes = codes.to(self.codebooks[0].weight.device)
        codes = torch.where(codes == -1, 0, codes)  # a new tensor, never the caller's
        k = self.codebook_size
        bad = (codes < 0) | (codes >= k)
        if bad.any():
            raise ValueError(f"codes must be in 0..{k - 1} or -1; got {codes[bad].unique().tolist()}")
        out = 0
        for level, book in enumerate(self.codebooks):
            out = out + book.weight[codes[:, level]]
        return out


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, centroids).argmin(1)


def _kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means; a cluster that empties is moved onto a random point. Returns (centroids, counts)."""
    pick = torch.randperm(len(x), generator=gen)[:k]
    if len(pick) < k:  # fewer points than codes: repeat them (the duplicates die and restart later)
        pick = pick[torch.randint(len(pick), (k,), generator=gen)]
    centroids = x[pick].clone()
    for _ in range(iters):
        assign = _nearest(x, centroids)
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        empty = counts == 0
        centroids = torch.where(empty[:, None], x[torch.randint(len(x), (k,), generator=gen)],
                                sums / counts.clamp_min(1)[:, None])
    assign = _nearest(x, centroids)
    return centroids, torch.bincount(assign, minlength=k).float()
