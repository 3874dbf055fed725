"""Tasks: what every environment of one task shares, in one object per task.

An environment (``envs.get_env``) is a task on a source: the shapes world and gRefCOCO are both GRES. What the
rest of the project needs to know about the task itself lives here, so that evaluation, reports, the demo,
experiments and the reward probe ask the task instead of branching on its name:

* the answer: how a sample's encoded masks become its GT answer text (``answer``);
* the official metric and the prediction files it writes (``score``), the reported metrics with the headline
  first, and the one that rises only when masks get better (``mask_metric``);
* the greedy completion budget (``max_new_tokens``) and the rewards a recipe that lists none trains with;
* the wording of reports: which metric's rise explains a gain (``gain_sources``), which fall means targets were
  traded for ``No target.`` (``trade_metric``), why a headline gain without a mask gain is suspect;
* what the reward probe needs: an answer's kind, the mask_iou mode that measures a completion's masks, whether
  the paper's binary reward gives a completion full marks, and which kind holds the no-target answers.

``Task`` and its registry live in ``envs.base`` (which builds answers through them); the two tasks are defined here.
A new task is one ``Task`` passed to ``register_task`` and its environments to ``envs.register_env``;
``tests/test_envs_task.py`` adds a toy task that way and runs evaluation and the reports on it.
"""

from __future__ import annotations

import json
from pathlib import Path

from envs.base import TASKS, Task, gcg_answer, get_task, gres_answer, merged_mask, predicted_masks, register_task
from tokenizer.masks import encode_rle

# ---------------------------------------------------------------- GRES


def gres_kind(no_target: bool, n_masks: int) -> str:
    """``no_target`` / ``single`` / ``multi``: a GT answer's kind (a target row without masks counts as no target)."""
    if no_target or n_masks == 0:
        return "no_target"
    return "single" if n_masks == 1 else "multi"


def score_gres(rows, texts, mask_tokenizer, out_dir: Path, embed=None, with_captions: bool = True) -> dict:
    """ReLA's GRES metrics; writes ``predictions.jsonl`` (text, no-target flag, merged mask per row).

    Rows are decoded and scored one at a time, so memory does not grow with the split. ``embed`` and
    ``with_captions`` are GCG's and unused here.
    """
    from envs.metrics import gres_scores

    def records(f):
        for row, text in zip(rows, texts):
            pred = predicted_masks(text, row, mask_tokenizer)
            merged = pred.any(0)
            pred_nt = len(pred) == 0  # SAMTok: no mask group means "no target"
            f.write(json.dumps({"id": row["id"], "question": row["question"], "completion": text,
                                "pred_no_target": pred_nt, "masks": len(pred), "pred_mask": encode_rle(merged),
                                "gt_no_target": row["no_target"]}) + "\n")
            yield merged, pred_nt, merged_mask(row["masks"], merged.shape), row["no_target"]

    with open(Path(out_dir) / "predictions.jsonl", "w") as f:
        return gres_scores(records(f))


def _gres_exact(text: str, answer: str) -> bool:
    from rewards.answer_match import score

    return score(text, answer, "binary") == 1.0


def _gres_mask_flag(d: dict) -> str:
    source = (f"it comes from the no-target decisions (N-acc {d['N-acc']:+.2f})" if d.get("N-acc", 0.0) > 0
              else "gIoU's per-sample average moved, not the masks overall")
    return f"the gain is not better masks; {source}"


GRES = register_task(Task(
    name="gres",
    metrics=("gIoU", "cIoU", "N-acc", "T-acc"),
    mask_metric="cIoU",
    max_new_tokens=96,
    recommended_rewards=("answer_match", "no_repeat", "gres_format"),
    answer=lambda sample, texts: gres_answer(texts, sample["expression"]),
    score=score_gres,
    kind=lambda row: gres_kind(bool(row.get("no_target")), len(row.get("masks") or [])),
    exact=_gres_exact,
    iou_mode="gres",
    gain_sources=(("better masks", "cIoU"), ("no-target decisions", "N-acc"), ("more targets answered", "T-acc")),
    mask_flag_reason=_gres_mask_flag,
    trade_metric="T-acc",
    no_target_kind="no_target",
    demo_target=3.0,
))


# ---------------------------------------------------------------- GCG


def score_gcg(rows, texts, mask_tokenizer, out_dir: Path, embed=None, with_captions: bool = True) -> dict:
    """GLaMM's GCG metrics over per-image prediction JSONs written to ``out_dir/predictions``."""
    from envs.gcg import prediction_record, write_gt_files
    from envs.metrics import gcg_scores

    out_dir = Path(out_dir)
    pred_dir = out_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    for row, text in zip(rows, texts):
        record = prediction_record(row["image_id"], text, predicted_masks(text, row, mask_tokenizer))
        (pred_dir / f"{row['image_id']}.json").write_text(json.dumps(record))
    cap_file, mask_file = write_gt_files(rows, out_dir / "gt")
    return gcg_scores(pred_dir, cap_file, mask_file, embed=embed, with_captions=with_captions)


def gcg_kind(row: dict) -> str:
    """The number of phrases (``4+`` from four on)."""
    n = len(row.get("masks") or [])
    return f"{n} phrase{'s' if n != 1 else ''}" if n < 4 else "4+ phrases"


def _gcg_exact(text: str, answer: str) -> bool:
    from rewards.answer_match import answer_match

    return answer_match(grading="binary", task="gcg", phrase_weight=0.0, no_repeat_weight=0.0)(
        completions=[text], answer=[answer])[0] == 1.0


def recall_note() -> str:
    """Which phrase similarity GCG recall used: it decides whether recall compares with published numbers."""
    import os

    bert = os.environ.get("SAMTOK_RL_BERT")
    if bert:
        return f"GCG recall's phrase similarity: BERT from {bert}."
    return ("GCG recall's phrase similarity: a character n-gram stand-in (SAMTOK_RL_BERT is not set), so recall is "
            "not comparable to published numbers; METEOR/CIDEr are not computed (they need Java).")


GCG = register_task(Task(
    name="gcg",
    metrics=("AP50", "mIoU", "recall"),
    mask_metric="mIoU",
    max_new_tokens=128,
    recommended_rewards=("answer_match", "no_repeat", "gcg_format"),
    answer=lambda sample, texts: gcg_answer(sample["caption"], sample["spans"], texts),
    score=score_gcg,
    kind=gcg_kind,
    exact=_gcg_exact,
    iou_mode="instances",
    gain_sources=(("better masks", "mIoU"), ("more phrases grounded", "recall")),
    mask_flag_reason=lambda d: "more masks clear IoU 0.5, but the masks are not better on average",
    reward_terms=", with the recipe's phrase and no-repeat terms",
    score_note=recall_note,
))

__all__ = ["GCG", "GRES", "TASKS", "Task", "gcg_kind", "get_task", "gres_kind", "recall_note",
           "register_task", "score_gcg", "score_gres"]
