"""Which prompts GRPO trains on, in which order: TRL's repeat sampler made resumable, and drawn by answer kind.

Both keep TRL's ``RepeatSampler`` layout (each prompt's ``num_generations`` copies consecutive, a generation
batch of prompts repeated ``repeat_count`` times), so everything downstream of the sampler is TRL's own.
"""

from __future__ import annotations

import torch

from envs.task import gres_kind
from rl.grpo.seam import RepeatSampler
from rl.recipe.config import ANSWER_KINDS


def stratified(pools: dict[str, list[int]], counts: dict[str, int], generator: torch.Generator) -> list[int]:
    """``counts[k]`` rows of each kind ``k`` (from ``pools[k]`` in order, cycled), interleaved so that every prefix of
    the order holds each kind in proportion: each slot goes to the kind furthest behind its share (ties in a random
    order fixed per call). Proportions hold within one row of every kind at every prefix."""
    total = sum(counts.values())
    kinds = [k for k in counts if counts[k] > 0]
    tie = dict(zip(kinds, torch.randperm(len(kinds), generator=generator).tolist()))
    taken = dict.fromkeys(kinds, 0)
    order = []
    for t in range(1, total + 1):
        kind = max(kinds, key=lambda k: (t * counts[k] / total - taken[k], tie[k]))
        order.append(pools[kind][taken[kind] % len(pools[kind])])
        taken[kind] += 1
    return order


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` with each epoch's order drawn from ``seed + epoch``.

    TRL's draws every epoch from one generator seeded once, so a process resumed in epoch 2 starts that
    generator afresh and replays epoch 1's order. The Trainer calls ``set_epoch`` before every epoch
    (through accelerate's loader, also after ``skip_first_batches``), so the order is a function of the
    epoch alone, the same for a straight and a resumed run, and for every rank.
    """

    epoch = 0
    kinds: list[str] | None = None  # set: the order is stratified by answer kind (``Sampling.stratify``)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + self.epoch)
        if self.kinds is None:
            return super().__iter__()
        # Each kind's rows in a fresh permutation, interleaved evenly: the uniform shuffle's prompts, stratified.
        g = torch.Generator().manual_seed((self.seed or 0) + self.epoch)
        pools = {k: [i for i, kind in enumerate(self.kinds) if kind == k] for k in ANSWER_KINDS}
        pools = {k: [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()] for k, rows in pools.items() if rows}
        return self._batches(stratified(pools, {k: len(v) for k, v in pools.items()}, g))

    def _batches(self, indexes: list[int]):
        """TRL's layout of an epoch's prompt order: full batches only, each repeated, each prompt mini-repeated."""
        for start in range(0, len(indexes) - self.batch_size + 1, self.batch_size):
            chunk = indexes[start : start + self.batch_size]
            for _ in range(self.repeat_count):
                for index in chunk:
                    yield from [index] * self.mini_repeat_count


answer_kind = gres_kind  # the kinds GRES rows are balanced and logged by


def dataset_kinds(dataset) -> list[str]:
    """The answer kind of every row, from the ``no_target`` and ``masks`` columns (images are not read)."""
    missing = [c for c in ("no_target", "masks") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"sampling.balance needs the rows' {' and '.join(missing)} column(s); this dataset has "
                         f"{', '.join(dataset.column_names)}")
    return [answer_kind(bool(nt), len(m)) for nt, m in zip(dataset["no_target"], dataset["masks"])]


def kind_counts(shares: dict[str, float], total: int) -> dict[str, int]:
    """``total`` split by ``shares`` (normalised) with the largest-remainder rule: exact, and sums to ``total``."""
    weight = sum(shares.values())
    exact = {k: total * v / weight for k, v in shares.items()}
    counts = {k: int(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: (counts[k] - exact[k], ANSWER_KINDS.index(k)))[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


class BalancedRepeatSampler(EpochSeededRepeatSampler):
    """Prompts drawn by answer kind in fixed proportions, in TRL's repeat layout.

    Each epoch has as many prompts as the dataset. Their kinds are exact counts from the shares
    (``kind_counts``), in a random order; the prompts of a kind come from a fresh permutation of that kind's
    rows, cycled when the kind's share exceeds its rows (oversampling) and cut short when it is below (the
    rest wait for later epochs' permutations). The order is a function of ``seed + epoch``, like the parent's.
    """

    def __init__(self, data_source, mini_repeat_count, batch_size=1, repeat_count=1, shuffle=True, seed=None,
                 kinds: list[str] = (), shares: dict[str, float] | None = None, stratify: bool = False):
        super().__init__(data_source, mini_repeat_count, batch_size, repeat_count, True, seed)
        self.stratify = stratify
        if len(kinds) != self.num_samples:
            raise ValueError(f"{len(kinds)} answer kinds for {self.num_samples} rows")
        self.shares = {k: float(v) for k, v in (shares or {}).items() if v > 0}
        self.rows = {k: [i for i, kind in enumerate(kinds) if kind == k] for k in self.shares}
        empty = [k for k, rows in self.rows.items() if not rows]
        if empty:
            have = {k: kinds.count(k) for k in ANSWER_KINDS}
            raise ValueError(f"sampling.balance asks for {', '.join(empty)} prompts, but the training set has none "
                             f"(rows per kind: {have})")

    def epoch_order(self) -> list[int]:
        g = torch.Generator().manual_seed((self.seed or 0) + self.epoch)
        counts = kind_counts(self.shares, self.num_samples)
        if self.stratify:
            pools = {k: [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()] for k, rows in self.rows.items()}
            return stratified(pools, counts, g)
        slots = [k for k in self.shares for _ in range(counts[k])]
        slots = [slots[i] for i in torch.randperm(len(slots), generator=g).tolist()]
        pools, taken = {}, dict.fromkeys(self.shares, 0)
        order = []
        for kind in slots:
            rows = self.rows[kind]
            if taken[kind] % len(rows) == 0:  # a fresh permutation each pass through the kind's rows
                pools[kind] = [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()]
            order.append(pools[kind][taken[kind] % len(rows)])
            taken[kind] += 1
        return order

    def __iter__(self):
        return self._batches(self.epoch_order())


# ---------------------------------------------------------------- dynamic sampling (DAPO's filter_groups)

def draw_prompts(sampler, n: int, generator: torch.Generator) -> list[int]:
    """``n`` fresh prompt rows for an extra generation round, drawn as ``sampler`` draws (uniform, or by kind)."""
    if isinstance(sampler, BalancedRepeatSampler):
        kinds = list(sampler.shares)
        weights = torch.tensor([sampler.shares[k] for k in kinds], dtype=torch.float64)
        picks = torch.multinomial(weights, n, replacement=True, generator=generator).tolist()
        return [sampler.rows[kinds[p]][int(torch.randint(len(sampler.rows[kinds[p]]), (1,), generator=generator))]
                for p in picks]
    return torch.randint(sampler.num_samples, (n,), generator=generator).tolist()


def group_spread(rewards_per_func: torch.Tensor, weights: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Per-group std of the weighted total reward (TRL's ``sum_then_normalize`` total); NaN for a group with
    fewer than two scorable completions (a completion with every reward None is unscorable, as in TRL)."""
    unscorable = torch.isnan(rewards_per_func).all(1)
    total = (rewards_per_func * weights.to(rewards_per_func.device)).nansum(1)
    total[unscorable] = float("nan")
    groups = total.view(-1, num_generations)
    n = (~torch.isnan(groups)).sum(1)
    mean = torch.nanmean(groups, 1, keepdim=True)
    var = torch.nansum((groups - mean) ** 2, 1) / (n - 1).clamp(min=1)
    return torch.where(n >= 2, var.sqrt(), torch.full_like(var, float("nan")))


def round_seed(seed: int, step: int, round_: int, rank: int) -> int:
    # A function of the position in training only: a resumed run draws the same extra prompts.
    return (((seed * 1_000_003 + step) * 1_009 + round_) * 4_099 + rank) % (2**63)
