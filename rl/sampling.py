"""Which prompts GRPO trains on, in which order: TRL's repeat sampler made resumable, and drawn by answer kind.

Both keep TRL's ``RepeatSampler`` layout (each prompt's ``num_generations`` copies consecutive, a generation
batch of prompts repeated ``repeat_count`` times), so everything downstream of the sampler is TRL's own.
"""

from __future__ import annotations

import torch
from trl.trainer.utils import RepeatSampler

from rl.config import ANSWER_KINDS


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` with each epoch's order drawn from ``seed + epoch``.

    TRL's draws every epoch from one generator seeded once, so a process resumed in epoch 2 starts that
    generator afresh and replays epoch 1's order. The Trainer calls ``set_epoch`` before every epoch
    (through accelerate's loader, also after ``skip_first_batches``), so the order is a function of the
    epoch alone, the same for a straight and a resumed run, and for every rank.
    """

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + self.epoch)
        return super().__iter__()

    def _batches(self, indexes: list[int]):
        """TRL's layout of an epoch's prompt order: full batches only, each repeated, each prompt mini-repeated."""
        for start in range(0, len(indexes) - self.batch_size + 1, self.batch_size):
            chunk = indexes[start : start + self.batch_size]
            for _ in range(self.repeat_count):
                for index in chunk:
                    yield from [index] * self.mini_repeat_count


def answer_kind(no_target: bool, n_masks: int) -> str:
    """``no_target`` / ``single`` / ``multi``: a GT answer's kind (a target row without masks counts as no target)."""
    if no_target or n_masks == 0:
        return "no_target"
    return "single" if n_masks == 1 else "multi"


def dataset_kinds(dataset) -> list[str]:
    """The answer kind of every row, from the ``no_target`` and ``masks`` columns (images are not read)."""
    missing = [c for c in ("no_target", "masks") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"sampling.balance needs the rows' {' and '.join(missing)} column(s); this dataset has "
                         f"{', '.join(dataset.column_names)}")  # fmt: skip
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
                 kinds: list[str] = (), shares: dict[str, float] | None = None):
        super().__init__(data_source, mini_repeat_count, batch_size, repeat_count, True, seed)
        if len(kinds) != self.num_samples:
            raise ValueError(f"{len(kinds)} answer kinds for {self.num_samples} rows")
        self.shares = {k: float(v) for k, v in (shares or {}).items() if v > 0}
        self.rows = {k: [i for i, kind in enumerate(kinds) if kind == k] for k in self.shares}
        empty = [k for k, rows in self.rows.items() if not rows]
        if empty:
            have = {k: kinds.count(k) for k in ANSWER_KINDS}
            raise ValueError(f"sampling.balance asks for {', '.join(empty)} prompts, but the training set has none "
                             f"(rows per kind: {have})")  # fmt: skip

    def epoch_order(self) -> list[int]:
        g = torch.Generator().manual_seed((self.seed or 0) + self.epoch)
        counts = kind_counts(self.shares, self.num_samples)
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
