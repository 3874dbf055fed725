r"""The textual answer-matching reward (SAMTok §4.2): mask-token groups are compared as strings, no decoding.

Rules, as in the released reward code:

* A mask group is the well-formed string ``<|mt_start|><|mt_dddd|><|mt_dddd|><|mt_end|>``; anything else
  (a broken group, a stray code) counts as nothing. This is stricter than ``tokenizer.codec.parse_masks``
  on purpose: the released reward file (``text2mask.py``) defines the official repair path
  (``fix_mt_format_comprehensive``, ``extract_mt_token_ids_v2``) but its textual rewards never call it:
  ``mask_token_accuracy_reward``, the GCG mask reward and ``non_repeat_reward`` all run this strict regex on
  the raw response. The repair belongs to decoding (``parse_masks``, ``rewards.iou``, the evaluation), so
  e.g. ``<|mt_start|><|mt_0182|>  <|mt_start|>...`` decodes a coarse mask for its first group but scores
  nothing here.
* R = sum over *unique* predicted groups of the best grade against the unique GT groups, divided by
  max(#predicted groups including duplicates, #GT groups). Both empty -> 1.0; one side empty -> 0.0.
* Grading ``binary`` (the paper): 1 for an identical group. ``coarse`` (the released code): also 0.4 when
  only the level-1 code matches.
* GCG: only groups that directly follow ``<|object_ref_start|>phrase<|object_ref_end|>`` count for the mask
  term; the phrase term compares normalised phrases. Known differences from the released regex
  (``<|object_ref_start|>(.*?)\s*<|object_ref_end|>\s*(<|mt_start|>(<|mt_\d+|>){2}<|mt_end|>)``, which
  yields the masks and the phrases together), all on malformed output: it also takes codes of other than
  four digits; its phrase may run across other object-ref markers but not across a newline; and it
  counts only phrases followed by a group, where a phrase here counts for the phrase term on its own.

Everything here is pure Python on strings and never raises on any input.
"""

from __future__ import annotations

from collections import Counter

from rewards.parsing import completion_text, gcg_parse, gt_gcg, gt_groups, strict_groups
from tokenizer.codec import OBJ_START

GRADINGS = ("binary", "coarse")
TASKS = ("auto", "gres", "gcg")
COARSE_CREDIT = 0.4
MAX_REPEATS = 3

def _check_grading(grading: str) -> None:
    if grading not in GRADINGS:
        raise ValueError(f"grading must be one of {GRADINGS}, got {grading!r}")


def _match(pred: list[tuple[str, str]], gt: list[tuple[str, str]], coarse: bool) -> float:
    if not pred and not gt:
        return 1.0
    if not pred or not gt:
        return 0.0
    gt_set = set(gt)
    hits = 0.0
    if coarse:
        gt_first = {g[0] for g in gt_set}
        for p in set(pred):
            hits += 1.0 if p in gt_set else (COARSE_CREDIT if p[0] in gt_first else 0.0)
    else:
        hits = len(gt_set.intersection(pred))
    return hits / max(len(pred), len(gt))


def score(completion, answer, grading: str = "binary") -> float:
    """Answer-matching score of one completion against one GT answer, in [0, 1]."""
    _check_grading(grading)
    answer = answer if isinstance(answer, str) else ""
    return _match(strict_groups(completion_text(completion)), gt_groups(answer), grading == "coarse")


def no_repeat(completion) -> float:
    """0.0 if any well-formed mask group occurs more than 3 times in the completion, else 1.0."""
    return _no_repeat(strict_groups(completion_text(completion)))


def _no_repeat(groups: list) -> float:
    if len(groups) <= MAX_REPEATS:
        return 1.0
    return 0.0 if max(Counter(groups).values()) > MAX_REPEATS else 1.0


def _phrase_accuracy(pred: list[str], gt: list[str]) -> float:
    if not gt:
        return 1.0
    gt_set = set(gt)
    hits = sum(1 for p in set(pred) if p in gt_set)
    return hits / max(len(pred), len(gt))


def gcg_scores(completion, answer, grading: str = "binary") -> dict[str, float]:
    """GCG terms: ``mask`` (groups paired with a phrase, graded as in ``score``) and ``phrase`` accuracy."""
    _check_grading(grading)
    answer = answer if isinstance(answer, str) else ""
    pred_groups, pred_phrases = gcg_parse(completion_text(completion))
    gt_masks, gt_phrases = gt_gcg(answer)
    return {
        "mask": _match(pred_groups, gt_masks, grading == "coarse"),
        "phrase": _phrase_accuracy(pred_phrases, gt_phrases),
    }


class AnswerMatch:
    """The answer-matching reward as a callable (TRL's contract; picklable: plain attributes only)."""

    __name__ = "answer_match"  # TRL names a reward's logged columns after it

    def __init__(self, grading: str = "binary", task: str = "auto", phrase_weight: float = 0.0,
                 no_repeat_weight: float = 0.0, normalize: bool = True):
        _check_grading(grading)
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        for name, w in (("phrase_weight", phrase_weight), ("no_repeat_weight", no_repeat_weight)):
            if not isinstance(w, (int, float)) or not w >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {w!r}")
        self.grading, self.task = grading, task
        self.phrase_weight, self.no_repeat_weight = phrase_weight, no_repeat_weight
        self.total = 1.0 + phrase_weight + no_repeat_weight if normalize else 1.0

    def score(self, completion, answer) -> float | None:
        if not isinstance(answer, str):  # no ground truth for this row: not applicable (TRL's None)
            return None
        text, coarse = completion_text(completion), self.grading == "coarse"
        if self.task == "gcg" or (self.task == "auto" and OBJ_START in answer):
            pred_groups, pred_phrases = gcg_parse(text)
            gt_masks, gt_phrases = gt_gcg(answer)
            value = _match(pred_groups, gt_masks, coarse)
            if self.phrase_weight:
                value += self.phrase_weight * _phrase_accuracy(pred_phrases, gt_phrases)
            if self.no_repeat_weight:  # with at most 3 starts no group can repeat: skip the second parse
                few = text.count("<|mt_start|>") <= MAX_REPEATS
                value += self.no_repeat_weight * (1.0 if few else _no_repeat(strict_groups(text)))
        else:
            groups = strict_groups(text)
            value = _match(groups, gt_groups(answer), coarse) + self.phrase_weight  # full phrase credit
            if self.no_repeat_weight:
                value += self.no_repeat_weight * _no_repeat(groups)
        return value / self.total

    def __call__(self, prompts=None, completions=(), completion_ids=None, answer=None, **columns):
        if answer is None:
            raise ValueError("answer_match needs the dataset column 'answer' (the ground-truth answer text)")
        return [self.score(c, a) for c, a in zip(completions, answer, strict=True)]


class NoRepeat:
    """The no-repeat term as a reward of its own (callable, picklable)."""

    __name__ = "no_repeat"

    def __call__(self, prompts=None, completions=(), completion_ids=None, **columns):
        return [no_repeat(c) for c in completions]


def answer_match(
    grading: str = "binary",
    task: str = "auto",
    phrase_weight: float = 0.0,
    no_repeat_weight: float = 0.0,
    normalize: bool = True,
) -> AnswerMatch:
    """The answer-matching reward (an ``AnswerMatch``).

    ``task="auto"`` scores a row as GCG when its answer contains an object-ref phrase, else as GRES.
    The reward is ``mask + phrase_weight * phrase + no_repeat_weight * no_repeat`` (phrase only for GCG rows;
    GRES rows get full phrase credit, as the released code does), divided by the sum of the weights when
    ``normalize`` so that it stays in [0, 1]. ``normalize=False, phrase_weight=1, no_repeat_weight=1`` is the
    released code's GCG total (range [0, 3]).

    The answer comes from the dataset column ``answer``. GCG needs the object-ref tokens, which TRL strips
    from ``completions``: use ``rewards.wrap_rewards``, which hands rewards the raw decoded text.
    """
    return AnswerMatch(grading, task, phrase_weight, no_repeat_weight, normalize)


def no_repeat_reward() -> NoRepeat:
    """The no-repeat term as a reward of its own."""
    return NoRepeat()
