"""A decode-free partial-credit mask reward: predicted and GT mask groups compared in the tokenizer's latent space.

A SAMTok group ``(c1, c2)`` stands for the quantised latent ``E1[c1] + E2[c2]`` (the sum of its level
embeddings, ``ResidualQuantizer.embed_codes``), which the decoder turns into a mask. Two groups whose latents
are close decode to similar masks, so the similarity of latents is a dense stand-in for the decoded IoU that
needs no image, no image encoder and no decoder: it costs what the text reward costs (a few dot products).

Score of a completion, in [0, 1], with ``answer_match``'s rules:
- groups are parsed on the decoding's repair path (``tokenizer.codec.parse_masks``; ``(c1, -1)`` is
  ``(c1, 0)``, as the released quantiser embeds it); GT groups come from the row's ``answer``;
- unique predicted groups are matched one-to-one to the GT groups (Hungarian, on the similarity); the score is
  the matched similarity / max(#predicted groups including duplicates, #GT groups), so repeats and extra or
  missing groups cost;
- both empty (a correct ``No target.``) -> 1, one side empty -> 0;
- ``mode: gcg``: only groups that directly follow a phrase count, and only pairs with the same normalised
  phrase can match (``mask_iou``'s gcg rule).

Similarity of latents ``a``, ``b``: ``rbf`` (default) ``exp(-||a - b||^2 / scale)`` where ``scale`` is the mean
squared distance between the latents of two random codes of the codebooks (so 1 is identical and a random
pair scores about exp(-1)); ``cosine``: ``max(0, cos(a, b))``. How well each ranks pairs like the decoded IoU
does on the shapes world: ``python bench/latent_reward.py``.

Model output is untrusted: parsing never raises, whatever the completion.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from rewards.parsing import completion_text, gcg_pred
from tokenizer.codec import parse_masks

SIMILARITIES = ("rbf", "cosine")
MODES = ("gres", "gcg")


def codebooks_of(mask_tokenizer="tiny16") -> list[np.ndarray]:
    """The level codebooks ``[K, D]`` of a mask tokenizer (a ``tokenizer.load`` spec or a loaded one), float64."""
    if isinstance(mask_tokenizer, str):
        from tokenizer.load import load_mask_tokenizer

        mask_tokenizer = load_mask_tokenizer(mask_tokenizer, "cpu")
    q = mask_tokenizer.quantizer
    k = q.codebook_size
    # Each level's table has K codes and one padding row after them, never a code.
    return [book.weight[:k].detach().double().cpu().numpy() for book in q.codebooks]


class LatentMatch:
    """Callable reward (TRL's contract; picklable: it holds only numpy arrays) built from a tokenizer's codebooks."""

    builds_model = True  # it loads the mask tokenizer: recipe validation binds its parameters without building

    def __init__(self, mask_tokenizer="tiny16", similarity: str = "rbf", mode: str = "gres", codebooks=None):
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        books = [np.asarray(b, dtype=np.float64) for b in (codebooks if codebooks is not None else codebooks_of(mask_tokenizer))]
        if len(books) != 2 or books[0].shape != books[1].shape:
            raise ValueError(f"expected two level codebooks of one shape, got {[b.shape for b in books]}")
        self.books, self.similarity, self.mode = books, similarity, mode
        self.k = books[0].shape[0]
        self.scale = self._random_pair_scale()
        self.__name__ = "latent_match"  # TRL names a reward's logged columns after it

    def _random_pair_scale(self) -> float:
        """Mean ||e(a) - e(b)||^2 over independent uniformly random code pairs, in closed form."""
        mean_sq = sum((b**2).sum(1).mean() - (b.mean(0) ** 2).sum() for b in self.books)
        return float(2 * mean_sq)  # E||x - y||^2 = 2 (E||x||^2 - ||E x||^2) for i.i.d. x, y

    def latents(self, codes: list[tuple[int, int]]) -> np.ndarray:
        idx = np.array([[c1, 0 if c2 == -1 else c2] for c1, c2 in codes], dtype=np.int64).reshape(-1, 2)
        return self.books[0][idx[:, 0]] + self.books[1][idx[:, 1]]

    def pair_similarity(self, pred: list[tuple[int, int]], gt: list[tuple[int, int]]) -> np.ndarray:
        a, b = self.latents(pred), self.latents(gt)
        if self.similarity == "cosine":
            na, nb = np.linalg.norm(a, axis=1, keepdims=True), np.linalg.norm(b, axis=1, keepdims=True)
            return np.clip((a @ b.T) / np.maximum(na * nb.T, 1e-12), 0.0, 1.0)
        d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-np.maximum(d2, 0.0) / self.scale)

    def score(self, completion, answer) -> float:
        # Groups are read as this tokenizer decodes them (``mask_groups``' codebook_size): a first code past
        # the codebook names no mask, a second one past it is -1 (embedded as 0).
        text, answer = completion_text(completion), answer if isinstance(answer, str) else ""
        if self.mode == "gcg":
            pred_phrases, pred = gcg_pred(text, self.k)
            gt_phrases, gt = gcg_pred(answer, self.k)
        else:
            pred, gt = parse_masks(text, self.k), parse_masks(answer, self.k)
            pred_phrases = gt_phrases = None
        if not pred and not gt:
            return 1.0
        if not pred or not gt:
            return 0.0
        if self.mode == "gcg":
            pairs = list(dict.fromkeys(zip(pred_phrases, pred)))
            sim = self.pair_similarity([c for _, c in pairs], gt)
            sim *= np.array([[p == g for g in gt_phrases] for p, _ in pairs], dtype=float).reshape(sim.shape)
        else:
            sim = self.pair_similarity(list(dict.fromkeys(pred)), list(dict.fromkeys(gt)))
        if 1 in sim.shape:  # one group on a side (most answers): the assignment is the best single pair
            return float(sim.max()) / max(len(pred), len(gt))
        rows, cols = linear_sum_assignment(sim, maximize=True)
        return float(sim[rows, cols].sum()) / max(len(pred), len(gt))

    def __call__(self, prompts=None, completions=(), answer=None, **columns) -> list[float]:
        answers = [None] * len(completions) if answer is None else answer
        return [self.score(c, a) for c, a in zip(completions, answers, strict=True)]
