"""Fuzz benchmark: adversarial completions through the mask-token codec and every built-in reward.

A benchmark, not a timed test: it streams N adversarial completions (default 1,000,000) in batches of 512
(TRL calls a reward once per batch: ``fn(prompts=..., completions=[str, ...], **dataset_columns)``) through

* the codec: ``tokenizer.codec.parse_masks`` and ``mask_groups`` (one call per text, plus a few non-strings,
  which they document as accepted);
* every built-in reward: ``answer_match`` (default, ``coarse`` with phrase and no-repeat terms, forced
  ``task=gcg``), ``no_repeat``, ``mask_format``, ``gres_format``, ``gcg_format`` (column ``answer``) and
  ``mask_iou`` in its three modes (columns ``image``, ``masks``, ``answer``; ``gcg`` mode gets only the GCG
  and no-target rows of each batch, whose answers align phrases with masks) and ``latent_match`` in its two
  modes (column ``answer``, the tiny tokenizer's codebooks). ``mask_iou`` decodes with a
  stand-in tokenizer (``SquareDecoder``: code ``(c1, c2)`` is a square placed by c1 and sized by c2, at the
  image's size; it rejects any code outside the codec's contract), so the IoU logic, GT RLE decoding and
  grouping run at full speed;
* on a smaller subset (``--n-wrapped``), the same rewards behind ``rewards.runtime.wrap_rewards`` with
  ``completion_ids`` from the tiny policy tokenizer (``rl.policy.model.build_tokenizer("tiny")``): the token ids of
  the adversarial texts, mutated with random ids, mask-token ids and out-of-vocabulary edge ids (-1,
  len(tokenizer), 2**31 - 1, ...), so ``decode_raw`` (timed on its own) and the wrapper run too; every
  wrapped value is checked against the bare reward on the decoded raw text. A quarter of those batches also
  go through the per-sample timeout path (``timeout_s=5``).

Generators (proportions printed): valid GRES/GCG/no-target answers (``envs.base.gres_answer``/``gcg_answer``
with ``format_mask``, quoted and unquoted masks), the same corrupted 1-4 times (truncation, token deletion /
duplication / swap, digit edits including 0- to 10-digit and 5000-digit codes and Unicode digits, out-of-range
codes, nested or unbalanced mask / object-ref markers, broken ```json fences, JSON garbage and deep nesting,
huge repeats, control and Unicode characters, whitespace between tokens), random soup of special tokens and
text, pure random Unicode (lone surrogates included), empty strings and ~20k-character strings. The
``answer`` column is varied too: valid GRES and GCG answers, ``No target.`` and, in some batches, malformed
rows (corrupted or non-string answers, broken RLE, wrong mask sizes, phrase/mask count mismatches, bad
images). A malformed row is a data error that may raise a clear ``ValueError``: counted as ``gt-errors``
(with a non-empty message), not as a failure; any other exception is a failure.

Checked per value: one value per completion, each ``None`` (only where the reward documents it: no GT
answer) or a finite number in [0, 1]; codec results in their documented ranges. ``oracle``: a completion that
is its row's GT answer must score 1.0 (every reward; ``gres_format``/``gcg_format`` on their own task;
``answer_match`` with phrase credit only where the GT's phrases are distinct: its phrase term counts unique
predicted phrases over max(#predicted, #GT), so a GT that names "a man" twice scores 0.5 on itself).
Exit status 1 on any failure (exception outside a malformed row, invalid value, oracle miss); SIGTERM or
Ctrl-C stops after the current batch and reports the partial run (exit status 2 when nothing failed).

Usage: OMP_NUM_THREADS=1 python bench/fuzz.py [--n 1000000] [--seed 0] [--batch 512] [--n-wrapped N]
       [--skip-iou] [--skip-wrapped] [--no-shrink]
Rates are per CPU second of this process (``time.process_time``) and per wall second; on a busy machine
only the first is meaningful. On one CPU thread (measured): ``--n 20000`` about 50 s, ``--n 100000`` (``make
bench``) about 2.5 min, the default 1,000,000 about 20 min for the direct run (~0.8k completions/s through all
14 functions, mask_iou most of it) plus about 1.5 min for the wrapped 10,000.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import signal
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from envs.base import gcg_answer, gres_answer  # noqa: E402
from rewards import get_reward  # noqa: E402
from tokenizer.codec import (  # noqa: E402
    CODEBOOK_SIZE,
    MT_END,
    MT_START,
    NO_TARGET,
    OBJ_END,
    OBJ_START,
    format_mask,
    mask_groups,
    parse_masks,
)
from tokenizer.masks import encode_rle  # noqa: E402

GROUP = 8  # completions per prompt (TRL's num_generations): they share one dataset row
MAX_PRED_MASKS = 64  # mask_iou's default bound

# ------------------------------------------------------------------------------------------ alphabets

_ND_ZEROS = [c for c in range(0x110000) if unicodedata.category(chr(c)) == "Nd" and unicodedata.digit(chr(c)) == 0]
DIGIT_SETS = ["0123456789"] + ["".join(chr(z + k) for k in range(10)) for z in _ND_ZEROS if z != 0x30]
WEIRD = [chr(c) for c in range(32)] + [
    "\x7f", "\x85", "\xa0", "\u2028", "\u2029", "\u200b", "\u200d", "\u200e", "\u202e", "\ufeff", "\u0301",
    "\ud800", "\udbff", "\udc00", "\udfff", "\U0010ffff", "\ufffd", "\uffff", "｜", "＜", "＞", "\u3000",
    "\U0001f600", "ǅ", "ß", "İ", "\\", "\\u", "\\ud800", '"', "'", "`",
]
MARKERS = [MT_START, MT_END, OBJ_START, OBJ_END]
SPECIAL_BITS = MARKERS + [
    "<|mt_", "|>", "<|", "<|mt_|>", "<|mt_start|", "|mt_end|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>",
    "<|vision_start|>", "<|image_pad|>", "<|box_start|>", "<|MT_START|>", "<| mt_start |>", "<<|mt_start|>>",
]
WORDS = ["man", "woman", "dog", "red car", "tree", "the sky", "grass", "a cat", "No target.", "No", "target",
         "mask_2d", "label", "json", "café", "東京タワー", "naïve", "Ünïcödé", "x" * 40]
JSON_BITS = ["[", "]", "{", "}", '"', ":", ",", "null", "true", "NaN", "-Infinity", "1e999", "-0", '"mask_2d"',
             '"label"', '"mask_2d": ', ', "label": "x"}', "\\", '"\\u"', '"\\ud800"', '"\\uDC00"', "\n", "```",
             "```json\n", "\n```", "1" * 50]
LABELS = ["all red shapes", "the man on the left", 'the "quoted" one', "back\\slash", "café au lait", "东京",
          "tab\there", "new\nline", "bell\x07", "", " ", "mt_0001 lookalike", "a" * 300, "\ud83d", "emoji 😀"]
PHRASES = ["man", "woman", "red car", "dog's toy", "the tall tree", "sky", "Café", "東京タワー", "a b c", "x",
           'a "q"', "under_score", "MiXeD CaSe", "  spaced  ", "tab\tphrase", "ñ"]
_PIECE_RE = re.compile(r"<\|[^|<>]{0,40}\|>|\s+|[^<\s]{1,8}|<")
_CODE_RE = re.compile(r"<\|mt_(\d*)\|>")


def _code_tok(v: int) -> str:
    return f"<|mt_{v:04d}|>"


class Gen:
    """Streams rows and adversarial completions from one seeded ``random.Random``."""

    SOURCES = (("valid", 0.10), ("corrupted", 0.58), ("soup", 0.15), ("unicode", 0.11), ("edge", 0.06))
    TASKS = (("gres", 0.45), ("gcg", 0.40), ("no_target", 0.15))
    DIRTY_BATCH = 1 / 16  # batches that carry malformed rows ...
    DIRTY_ROW = 1 / 4  # ... and the share of their rows that are malformed

    def __init__(self, seed: int, images):
        self.r = random.Random(seed)
        self.images = images
        self.rle_cache: dict = {}
        self.recent: list[str] = []  # recent valid answers: completions borrowed from other rows
        self.source_counts = Counter()
        self.mutation_counts = Counter()
        self.row_counts = Counter()
        r = self.r
        cps = [chr(c) for c in range(32, 127)] * 3 + WEIRD * 4 + [chr(r.randrange(0x110000)) for _ in range(3000)]
        cps += [chr(r.randrange(0x10000)) for _ in range(3000)] + [d for s in DIGIT_SETS for d in s][:2000]
        self.unicode_pop = cps
        self.fragments = (
            SPECIAL_BITS * 6
            + [_code_tok(r.randrange(512)) for _ in range(200)]
            + [_code_tok(r.randrange(10000)) for _ in range(40)]
            + [f"<|mt_{'9' * k}|>" for k in range(12)]
            + WORDS + JSON_BITS + WEIRD + [" ", " ", "\n", "\t", "  "]
        )

    # ---- rows
    def codes(self, k):
        seen = set()
        while len(seen) < k:
            seen.add((self.r.randrange(256), self.r.randrange(256)))
        return list(seen)

    def gres_text(self, codes, label=None, quoted=False):
        texts = [format_mask(c) for c in codes]
        if quoted:
            texts = [f'"{t}"' for t in texts]
        return gres_answer(texts, self.r.choice(LABELS) if label is None else label)

    def gcg_text(self, codes, phrases=None):
        r = self.r
        phrases = phrases or [r.choice(PHRASES) for _ in codes]
        caption, spans = r.choice(["A photo of ", "", "Here: "]), []
        for i, p in enumerate(phrases):
            if i:
                caption += r.choice([", ", " and ", " next to ", "\n", ""])
            spans.append((len(caption), len(caption) + len(p)))
            caption += p
        caption += r.choice([" in a park.", ".", ""])
        return gcg_answer(caption, spans, [format_mask(c) for c in codes]), phrases

    def gcg_gt(self, codes):
        """A GCG GT answer; its phrases are distinct (after normalisation) except in 1 row of 10."""
        if self.r.random() < 0.1:
            return self.gcg_text(codes)
        pool = list({" ".join(p.lower().split()): p for p in PHRASES}.values())
        return self.gcg_text(codes, self.r.sample(pool, len(codes)))

    def gt_rles(self, image, codes, form="str"):
        key = (id(image), tuple(codes), form)
        if key not in self.rle_cache:
            if len(self.rle_cache) > 50000:
                self.rle_cache.clear()
            masks = SquareDecoder.masks(_shape(image), codes)
            rles = [encode_rle(m) for m in masks]
            if form == "bytes":
                rles = [{"size": x["size"], "counts": x["counts"].encode()} for x in rles]
            elif form == "list":
                rles = [{"size": x["size"], "counts": _runs(m)} for x, m in zip(rles, masks)]
            self.rle_cache[key] = rles
        return self.rle_cache[key]

    def row(self, bad: bool) -> dict:
        """A dataset row: answer, image, masks; ``bad`` makes it malformed in one way."""
        r = self.r
        task = _pick(r, self.TASKS)
        image = r.choice(self.images)
        k = 0 if task == "no_target" else r.choice([1, 1, 2, 3] if task == "gres" else [1, 2, 3, 4])
        codes, dup = self.codes(k), False
        if task == "gres":
            answer = self.gres_text(codes)
        elif task == "gcg":
            answer, phrases = self.gcg_gt(codes)
            dup = len({" ".join(p.lower().split()) for p in phrases}) < len(phrases)
        else:
            answer = NO_TARGET
        form = r.choice(["str"] * 18 + ["bytes", "list"])
        row = {"task": task, "answer": answer,
               "image": image, "masks": self.gt_rles(image, codes, form) if codes else [], "bad": None,
               "dup_phrases": task == "gcg" and dup}
        if bad:
            self._break(row, codes)
        self.row_counts[row["bad"] or f"valid {row['task']}"] += 1
        if not bad and answer != NO_TARGET:
            self.recent.append(answer)
            if len(self.recent) > 256:
                del self.recent[: len(self.recent) - 256]
        return row

    def _break(self, row, codes):
        r = self.r
        kind = r.choice(["answer text", "answer text", "answer non-str", "masks", "masks", "image", "gcg count"])
        if kind == "answer text":
            row["answer"] = r.choice([self.mutate(row["answer"], r.randint(1, 4)), "", self.soup(), self.unicode()])
        elif kind == "answer non-str":
            row["answer"] = r.choice([None, 0, 1.5, b"No target.", ["No target."], {"answer": "x"}])
        elif kind == "masks":
            h, w = _shape(row["image"])
            good = encode_rle(SquareDecoder.masks((h, w), codes[:1])[0] if codes else np.zeros((h, w), bool))
            row["masks"] = r.choice([
                "not a list", 5, {"size": [h, w], "counts": "0"}, [None], ["rle"], [good, 7],
                [{"size": [h, w], "counts": "#!"}], [{"size": [h, w], "counts": good["counts"][:-1] + "~"}],
                [{"size": [h + 1, w], "counts": good["counts"]}], [{"size": [h, w]}], [{"counts": good["counts"]}],
                [{"size": [-h, w], "counts": [h * w]}], [{"size": [h, w], "counts": [h * w - 1]}],
                [{"size": [h, w], "counts": [-1, h * w + 1]}], [{"size": [h, w], "counts": "é" * 5}],
                [{"size": [h, w], "counts": [1.5]}], [{"size": [True, w], "counts": [w]}], [{"size": "hw", "counts": "0"}],
                [{"size": [10**6, 10**6], "counts": [10**12]}], [{"size": [h, w], "counts": None}],
            ])
        elif kind == "image":
            row["image"] = r.choice([None, "path/to/image.jpg", np.zeros(5), 3])
        else:  # GCG answer with one phrase fewer (or more) than masks
            row["answer"] = self.gcg_text(codes[:-1] if len(codes) > 1 else codes + self.codes(1))[0]
            row["task"] = "gcg"
        row["bad"] = f"malformed {kind}"

    # ---- completions
    def completion(self, row) -> tuple[str, str]:
        r = self.r
        src = _pick(r, self.SOURCES)
        gt = row["answer"] if isinstance(row["answer"], str) and not row["bad"] else None
        if gt is not None and r.random() < 0.6:
            base = gt
        else:
            base = r.choice(self.recent) if self.recent and r.random() < 0.5 else self.valid()
        if src == "valid":
            if gt is not None and r.random() < 0.5:
                src, text = "valid (GT copy)", gt
            else:
                text = self.valid()
        elif src == "corrupted":
            text = self.mutate(base, r.choice([1, 1, 1, 2, 2, 3, 4]))
        elif src == "soup":
            text = self.soup()
        elif src == "unicode":
            text = self.unicode()
        else:
            src, text = self.edge(base)
        self.source_counts[src] += 1
        return text, src

    def valid(self) -> str:
        r = self.r
        kind = r.random()
        if kind < 0.45:
            text = self.gres_text(self.codes(r.choice([1, 1, 2, 3])), quoted=r.random() < 0.3)
        elif kind < 0.9:
            text = self.gcg_text(self.codes(r.choice([1, 2, 3, 4])))[0]
        else:
            text = NO_TARGET
        return text if r.random() < 0.9 else r.choice([" ", "\n", ""]) + text + r.choice([" ", "\n", "<|im_end|>"])

    def soup(self, k=None) -> str:
        return "".join(self.r.choices(self.fragments, k=self.r.randrange(1, 200) if k is None else k))

    def unicode(self, k=None) -> str:
        return "".join(self.r.choices(self.unicode_pop, k=self.r.randrange(0, 300) if k is None else k))

    def edge(self, base) -> tuple[str, str]:
        r = self.r
        x = r.random()
        if x < 0.25:
            return "edge: empty/whitespace", r.choice(["", " ", "\n", "\t\n ", "\x00", "\ufeff"])
        if x < 0.6:  # huge repeats (~20k characters, a few 100k)
            unit = r.choice([format_mask(self.codes(1)[0]), MT_START, MT_START + _code_tok(r.randrange(256)), OBJ_START,
                             f"{OBJ_START}a{OBJ_END}", "[", "{", '{"mask_2d": ', base, "```json\n", "<|mt_", "9"])
            size = 100_000 if r.random() < 0.03 else 20_000
            return "edge: huge repeat", (unit * (size // max(1, len(unit)) + 1))[: size + r.randrange(64)]
        parts, size = [], 0  # ~20k characters of mixed content
        while size < 20_000:
            p = r.choice([base, self.soup(), self.unicode(), self.mutate(base, 2)])
            parts.append(p)
            size += len(p)
        return "edge: ~20k chars", "".join(parts)

    MUTATIONS = ("truncate", "delete", "duplicate", "swap", "digits", "out_of_range", "markers", "nest", "fence",
                 "json", "repeat", "unicode", "whitespace", "case")

    def mutate(self, text: str, times: int) -> str:
        for _ in range(times):
            m = self.r.choice(self.MUTATIONS)
            self.mutation_counts[m] += 1
            text = getattr(self, "_m_" + m)(text)
        return text

    def _pieces(self, text):
        return _PIECE_RE.findall(text) or [""]

    def _m_truncate(self, t):
        return t[: self.r.randrange(len(t) + 1)]

    def _m_delete(self, t):
        p = self._pieces(t)
        del p[self.r.randrange(len(p))]
        return "".join(p)

    def _m_duplicate(self, t):
        p = self._pieces(t)
        i = self.r.randrange(len(p))
        p[i] = p[i] * self.r.choice([2, 2, 3, 5, 50])
        return "".join(p)

    def _m_swap(self, t):
        p = self._pieces(t)
        i, j = self.r.randrange(len(p)), self.r.randrange(len(p))
        if self.r.random() < 0.5:
            j = min(i + 1, len(p) - 1)
        p[i], p[j] = p[j], p[i]
        return "".join(p)

    def _codes_in(self, t):
        return list(_CODE_RE.finditer(t))

    def _replace_code(self, t, digits):
        ms = self._codes_in(t)
        if not ms:
            return t + f"<|mt_{digits}|>"
        m = self.r.choice(ms)
        return t[: m.start(1)] + digits + t[m.end(1) :]

    def _m_digits(self, t):
        r = self.r
        n = r.choice([0, 1, 2, 3, 5, 6, 9, 10, 10, 4, 4, 60, 5000 if r.random() < 0.05 else 11])
        ds = r.choice(DIGIT_SETS) if r.random() < 0.4 else "0123456789"
        digits = "".join(r.choice(ds) for _ in range(min(n, 64))) + ("9" * (n - 64) if n > 64 else "")
        if r.random() < 0.1:
            digits = r.choice(["+001", "-001", " 001", "0x1f", "00_1", "1e3", "٠٠١٢", "０００１", "𝟎𝟎𝟏𝟐", "00.1"])
        return self._replace_code(t, digits)

    def _m_out_of_range(self, t):
        r = self.r
        v = r.choice([r.randrange(256, 512), r.randrange(512, 10000), r.randrange(0, 256), 9999, 0, 255, 256, 511, 512])
        return self._replace_code(t, f"{v:04d}")

    def _m_markers(self, t):
        r = self.r
        p = self._pieces(t)
        for _ in range(r.randint(1, 4)):
            if r.random() < 0.3 and len(p) > 1:  # remove a marker: unbalanced
                idx = [i for i, x in enumerate(p) if x in MARKERS]
                if idx:
                    del p[r.choice(idx)]
                    continue
            p.insert(r.randrange(len(p) + 1), r.choice(MARKERS + MARKERS + SPECIAL_BITS))
        return "".join(p)

    def _m_nest(self, t):
        r = self.r
        p = self._pieces(t)
        inner = r.choice([format_mask(self.codes(1)[0]), f"{OBJ_START}{r.choice(PHRASES)}{OBJ_END}",
                          f"{OBJ_START}x{OBJ_END}{format_mask(self.codes(1)[0])}", MT_START + MT_START, OBJ_START * 2])
        p.insert(r.randrange(len(p) + 1), inner)
        return "".join(p)

    def _m_fence(self, t):
        r = self.r
        x = r.randrange(9)
        if x == 0:
            return t.replace("```json\n", "", 1)
        if x == 1:
            return t[: t.rfind("```")] if "```" in t else t + "```"
        if x == 2:
            return t.replace("```json", r.choice(["```JSON", "``` json", "````json", "```jsonc", "``json", "```py"]), 1)
        if x == 3:
            return t.replace("```json\n", "```json", 1)
        if x == 4:
            return t + r.choice(["\ntrailing", "```", "\n```json\n[]\n```", " ", "\x00"])
        if x == 5:
            return "```json\n" + t
        if x == 6:
            return t.replace("\n", "\r\n")
        if x == 7:
            i = r.randrange(len(t) + 1)
            return t[:i] + "\n```\n" + t[i:]
        return t.replace("```", "", 1)

    def _m_json(self, t):
        r = self.r
        x = r.randrange(5)
        if x == 0:  # replace a structural character
            idx = [i for i, c in enumerate(t) if c in '[]{},:"']
            if idx:
                i = r.choice(idx)
                return t[:i] + r.choice(JSON_BITS + ["", "'"]) + t[i + 1 :]
        if x == 1:  # deep nesting
            i = r.randrange(len(t) + 1)
            return t[:i] + r.choice(["[", "{", '{"a":', "[{"]) * r.choice([10, 1000, 30000]) + t[i:]
        if x == 2:
            return t.replace('"label"', r.choice(['"label", "label"', '"lab"', "label", '"mask_2d"']), 1)
        if x == 3:
            return t.replace(", ", r.choice([", 1" + "0" * 5000 + ", ", ", NaN, ", ", ", ",, "]), 1)
        i = r.randrange(len(t) + 1)
        return t[:i] + "".join(r.choices(JSON_BITS, k=r.randint(1, 8))) + t[i:]

    def _m_repeat(self, t):
        r = self.r
        if not t:
            return t
        i = r.randrange(len(t))
        j = min(len(t), i + r.randint(1, 60))
        k = r.choice([2, 4, 10, 100, 1000])
        return t[:i] + t[i:j] * min(k, 20_000 // max(1, j - i)) + t[j:]

    def _m_unicode(self, t):
        r = self.r
        i = r.randrange(len(t) + 1)
        if r.random() < 0.5 and t:  # replace one character
            return t[: max(0, i - 1)] + r.choice(WEIRD + self.unicode_pop) + t[i:]
        return t[:i] + "".join(r.choices(WEIRD, k=r.randint(1, 5))) + t[i:]

    def _m_whitespace(self, t):
        p = self._pieces(t)
        p.insert(self.r.randrange(len(p) + 1), self.r.choice([" ", "\n", "\t", "  ", "\r\n", "\u3000", "\xa0"]))
        return "".join(p)

    def _m_case(self, t):
        p = self._pieces(t)
        idx = [i for i, x in enumerate(p) if x.startswith("<|")]
        if idx:
            i = self.r.choice(idx)
            p[i] = p[i].upper() if self.r.random() < 0.5 else p[i].replace("_", "-")
        return "".join(p)

    def batches(self, n: int, size: int):
        """Batches of ``size`` completions (groups of ``GROUP`` share a row) until ``n`` completions."""
        done = 0
        while done < n:
            m = min(size, n - done)
            dirty = self.r.random() < self.DIRTY_BATCH
            comps, sources, rows = [], [], []
            while len(comps) < m:
                row = self.row(dirty and self.r.random() < self.DIRTY_ROW)
                for _ in range(min(GROUP, m - len(comps))):
                    text, src = self.completion(row)
                    comps.append(text)
                    sources.append(src)
                    rows.append(row)
            done += m
            yield comps, sources, rows


def _pick(r, table):
    x, acc = r.random(), 0.0
    for name, p in table:
        acc += p
        if x < acc:
            return name
    return table[-1][0]


def _runs(mask) -> list[int]:
    """Uncompressed COCO RLE counts (column-major, starting with a run of zeros)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def _shape(image):
    if hasattr(image, "shape") and len(image.shape) in (2, 3):
        return int(image.shape[0]), int(image.shape[1])
    return image.size[1], image.size[0]


class SquareDecoder:
    """Stand-in mask tokenizer: ``decode(image, codes)`` -> bool [N, H, W]; code (c1, c2) is a square whose
    corner is set by c1 (a 16 x 16 grid) and whose side by c2 (-1 decodes as 0, as the real decoder does).
    Codes outside the codec's contract (c1 in 0..255, c2 in -1..255, at most ``max_pred_masks``) raise."""

    def decode(self, image, codes):
        if not isinstance(codes, list) or not 1 <= len(codes) <= MAX_PRED_MASKS:
            raise AssertionError(f"stand-in decoder got {type(codes).__name__} of {len(codes)} codes")
        return self.masks(_shape(image), codes)

    @staticmethod
    def masks(shape, codes):
        h, w = shape
        out = np.zeros((len(codes), h, w), dtype=bool)
        for k, c in enumerate(codes):
            if not (isinstance(c, tuple) and len(c) == 2 and type(c[0]) is int and type(c[1]) is int):
                raise AssertionError(f"stand-in decoder got code {c!r}")
            c1, c2 = c
            if not (0 <= c1 < CODEBOOK_SIZE and -1 <= c2 < CODEBOOK_SIZE):
                raise AssertionError(f"stand-in decoder got out-of-range code {c!r}")
            y, x = (c1 // 16) * h // 16, (c1 % 16) * w // 16
            side = 1 + (max(c2, 0) % 16) * min(h, w) // 16
            out[k, y : y + side, x : x + side] = True
        return out


# ------------------------------------------------------------------------------------------- bookkeeping


class Stat:
    def __init__(self, name):
        self.name = name
        self.calls = self.items = self.exceptions = self.gt_errors = self.invalid = self.oracle = 0
        self.cpu = self.wall = self.max_call = 0.0
        self.errors: dict = {}  # (type, message) -> [count, reproducer dict]; first 3 distinct
        self.other_errors = 0
        self.gt_messages: dict = {}
        self.problems: dict = {}  # invalid / oracle examples, first 3 distinct

    def timed(self, fn):
        c, w = time.process_time(), time.perf_counter()
        try:
            return fn()
        finally:
            dc, dw = time.process_time() - c, time.perf_counter() - w
            self.cpu += dc
            self.wall += dw
            self.max_call = max(self.max_call, dw)

    def error(self, e, repro):
        self.exceptions += 1
        key = (type(e).__name__, str(e).split("\n")[0][:200])
        if key in self.errors:
            self.errors[key][0] += 1
        elif len(self.errors) < 3:
            self.errors[key] = [1, repro]
        else:
            self.other_errors += 1

    def gt_error(self, e):
        self.gt_errors += 1
        key = (type(e).__name__, str(e)[:120])
        if key not in self.gt_messages and len(self.gt_messages) < 3:
            self.gt_messages[key] = True

    def problem(self, kind, message, repro):
        if kind == "oracle":
            self.oracle += 1
        else:
            self.invalid += 1
        key = (kind, message[:160])
        if key not in self.problems and len(self.problems) < 3:
            self.problems[key] = repro

    @property
    def failures(self):
        return self.exceptions + self.invalid + self.oracle


def _classify(stat, e, row, repro):
    """A malformed row may raise a clear ValueError (a gt-error); anything else is a failure."""
    if row is not None and row["bad"] and isinstance(e, ValueError) and str(e).strip():
        stat.gt_error(e)
    else:
        stat.error(e, repro)


def _valid_value(v, none_ok):
    if v is None:
        return None if none_ok else "None where a number was due"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"not a float: {type(v).__name__}"
    if not math.isfinite(v):
        return f"non-finite value {v}"
    if not -1e-9 <= v <= 1 + 1e-9:
        return f"value {v} outside [0, 1]"
    return None


def _describe(image):
    try:
        return f"{type(image).__name__} {_shape(image)[0]}x{_shape(image)[1]}"
    except Exception:  # noqa: BLE001 - a malformed image
        return repr(image)


def _repro(text, row=None, extra=None):
    out = {"completion": text}
    if row is not None:
        out["answer"] = row["answer"]
        out["row"] = row["bad"] or row["task"]
        out["image"] = _describe(row.get("image"))
    if extra:
        out.update(extra)
    return out


# ----------------------------------------------------------------------------------------- the codec

NON_STRINGS = [None, 0, 1.5, b"<|mt_start|><|mt_0001|><|mt_0257|><|mt_end|>", bytearray(b"<|mt_start|>"),
               ["<|mt_start|><|mt_0001|><|mt_0257|><|mt_end|>"], {"text": MT_START}, object()]


def _check_groups(text, groups):
    if not isinstance(groups, list):
        return f"mask_groups returned {type(groups).__name__}"
    prev = 0
    for g in groups:
        if not (0 <= prev <= g.start < g.end <= len(text) and text.startswith(MT_START, g.start)):
            return f"bad span {g.start}:{g.end} (text length {len(text)})"
        c1, c2 = g.codes
        if not (type(c1) is int and type(c2) is int and 0 <= c1 < CODEBOOK_SIZE and -1 <= c2 < CODEBOOK_SIZE):
            return f"bad codes {g.codes!r}"
        prev = g.end
    return None


def _check_pairs(text, pairs):
    if not isinstance(pairs, list):
        return f"parse_masks returned {type(pairs).__name__}"
    for c in pairs:
        if not (isinstance(c, tuple) and len(c) == 2 and type(c[0]) is int and type(c[1]) is int
                and 0 <= c[0] < CODEBOOK_SIZE and -1 <= c[1] < CODEBOOK_SIZE):
            return f"bad pair {c!r}"
    return None


def run_codec(stat, fn, check, texts):
    def body():
        out = []
        for t in texts:
            try:
                out.append((t, fn(t), None))
            except Exception as e:  # noqa: BLE001 - what we count
                out.append((t, None, e))
        return out

    results = stat.timed(body)
    stat.calls += len(texts)
    stat.items += len(texts)
    for t, res, e in results:
        if e is not None:
            stat.error(e, _repro(t))
        elif not isinstance(t, str):
            if res != []:
                stat.problem("invalid", f"non-string input gave {res!r:.60}", _repro(t))
        else:
            msg = check(t, res)
            if msg:
                stat.problem("invalid", msg, _repro(t))


# --------------------------------------------------------------------------------------------- rewards


class Target:
    """One reward under test: ``columns`` it receives, and which rows it may score None / must score 1.0."""

    def __init__(self, name, fn, columns, none_ok=lambda row: False, oracle=lambda row: True, rows=None):
        self.name, self.fn, self.columns, self.none_ok, self.oracle, self.rows = name, fn, columns, none_ok, oracle, rows
        self.stat = Stat(name)


def _text_targets():
    def no_answer(row):
        return not isinstance(row["answer"], str)

    def am(name, **params):
        # With phrase credit, a GT whose phrases repeat does not score 1.0 on itself (see the module docstring).
        oracle = (lambda row: not row["dup_phrases"]) if params.get("phrase_weight") else (lambda row: True)
        return Target(name, get_reward("answer_match", **params), ("answer",), none_ok=no_answer, oracle=oracle)

    return [
        am("answer_match"),
        am("answer_match[coarse,pw=1,nrw=1]", grading="coarse", phrase_weight=1.0, no_repeat_weight=1.0),
        am("answer_match[task=gcg,pw=0.5]", task="gcg", phrase_weight=0.5),
        Target("no_repeat", get_reward("no_repeat"), ("answer",)),
        Target("mask_format", get_reward("mask_format"), ("answer",)),
        Target("gres_format", get_reward("gres_format"), ("answer",), oracle=lambda row: row["task"] != "gcg"),
        Target("gcg_format", get_reward("gcg_format"), ("answer",), oracle=lambda row: row["task"] == "gcg"),
    ]


def _iou_targets():
    dec = SquareDecoder()
    cols = ("image", "masks", "answer")
    return [
        Target("mask_iou[gres]", get_reward("mask_iou", mode="gres", mask_tokenizer=dec), cols),
        Target("mask_iou[instances]", get_reward("mask_iou", mode="instances", mask_tokenizer=dec), cols),
        # gcg mode needs answers whose phrases align with the masks: GCG and no-target rows (and malformed ones).
        Target("mask_iou[gcg]", get_reward("mask_iou", mode="gcg", mask_tokenizer=dec), cols,
               rows=lambda row: row["task"] in ("gcg", "no_target")),
        # The tiny tokenizer's real codebooks (no decoding): the answer text is all it reads.
        Target("latent_match[gres]", get_reward("latent_match"), ("answer",)),
        Target("latent_match[gcg]", get_reward("latent_match", mode="gcg"), ("answer",),
               oracle=lambda row: row["task"] in ("gcg", "no_target")),
    ]


def run_reward(target, comps, sources, rows):
    if target.rows is not None:
        keep = [i for i, row in enumerate(rows) if target.rows(row)]
        comps, sources, rows = [comps[i] for i in keep], [sources[i] for i in keep], [rows[i] for i in keep]
    n = len(comps)
    if not n:
        return
    stat, fn = target.stat, target.fn
    cols = {c: [row[c] for row in rows] for c in target.columns}

    def batch():
        try:
            return fn(prompts=["p"] * n, completions=comps, **cols), None
        except Exception as e:  # noqa: BLE001
            return None, e

    out, err = stat.timed(batch)
    stat.calls += 1
    stat.items += n
    if err is None and not (isinstance(out, (list, tuple)) and len(out) == n):
        stat.problem("invalid", f"returned {type(out).__name__} of {len(out) if hasattr(out, '__len__') else '?'} for {n}",
                     _repro(comps[0], rows[0]))
        return
    if err is not None:  # find the samples that raise, one by one (what the wrapper does)
        out = []
        for i in range(n):
            sub = {c: v[i : i + 1] for c, v in cols.items()}

            def one():
                try:
                    return fn(prompts=["p"], completions=comps[i : i + 1], **sub), None
                except Exception as e:  # noqa: BLE001
                    return None, e

            v, e = stat.timed(one)
            stat.calls += 1
            if e is not None:
                _classify(stat, e, rows[i], _repro(comps[i], rows[i], {"_single": (target, sub)}))
                out.append(_RAISED)
            elif not (isinstance(v, (list, tuple)) and len(v) == 1):
                stat.problem("invalid", f"returned {v!r:.60} for 1 completion", _repro(comps[i], rows[i]))
                out.append(_RAISED)
            else:
                out.append(v[0])
    for v, text, src, row in zip(out, comps, sources, rows):
        if v is _RAISED:
            continue
        msg = _valid_value(v, target.none_ok(row))
        if msg:
            stat.problem("invalid", msg, _repro(text, row))
        elif src == "valid (GT copy)" and target.oracle(row) and not (v is not None and abs(v - 1.0) < 1e-6):
            stat.problem("oracle", f"the GT answer itself scored {v!r}", _repro(text, row))


_RAISED = object()


# ------------------------------------------------------------------------------------ wrapped rewards


EDGE_IDS = None


def _mutate_ids(r, ids, vocab, special):
    global EDGE_IDS
    if EDGE_IDS is None:
        EDGE_IDS = [-1, -2, -(2**31), vocab - 1, vocab, vocab + 1, vocab + 7, 2**16, 2**17 + 3, 2**31 - 1, 2**63 - 1]
    x = r.random()
    if x < 0.3:
        return ids
    ids = list(ids)
    if x < 0.4:
        return [r.choice(EDGE_IDS + special) if r.random() < 0.3 else r.randrange(vocab) for _ in range(r.randrange(300))]
    for _ in range(r.randint(1, 6)):
        y = r.random()
        pos = r.randrange(len(ids) + 1)
        if y < 0.35:
            ids.insert(pos, r.choice(EDGE_IDS))
        elif y < 0.6:
            ids.insert(pos, r.choice(special))
        elif y < 0.8:
            ids.insert(pos, r.randrange(vocab))
        elif ids:
            ids[min(pos, len(ids) - 1)] = r.choice(EDGE_IDS + special)
    if r.random() < 0.1:
        ids = ids[: r.randrange(len(ids) + 1)]
    return ids


class _Raised:
    def __init__(self, e):
        self.e = e


def _bare(target, texts, cols):
    """The bare reward on ``texts``: its values, with ``_Raised`` for a sample that raises."""
    n = len(texts)
    try:
        return target.fn(prompts=["p"] * n, completions=texts, **cols)
    except Exception:  # noqa: BLE001
        out = []
        for i in range(n):
            try:
                out.append(target.fn(prompts=["p"], completions=texts[i : i + 1], **{c: v[i : i + 1] for c, v in cols.items()})[0])
            except Exception as e:  # noqa: BLE001
                out.append(_Raised(e))
        return out



def _attempt(fn, *args, **kwargs):
    """``(result, None)``, or ``(None, exception)``: a failure is counted, never propagated."""
    try:
        return fn(*args, **kwargs), None
    except Exception as e:  # noqa: BLE001
        return None, e

def _encode(tok, texts):
    try:
        return tok(texts, add_special_tokens=False)["input_ids"]
    except Exception:  # noqa: BLE001 - lone surrogates cannot reach the Rust tokenizer (nor come out of it)
        clean = [t.encode("utf-8", "replace").decode("utf-8") for t in texts]
        return tok(clean, add_special_tokens=False)["input_ids"]


def run_wrapped(args, gen_seed, images, stats_out):
    import rewards.runtime as runtime
    from rewards import wrap_rewards
    from rl.policy.model import build_tokenizer

    tok = build_tokenizer("tiny")
    vocab = len(tok)
    special = tok.convert_tokens_to_ids([MT_START, MT_END, OBJ_START, OBJ_END, "<|mt_0000|>", "<|mt_0255|>",
                                         "<|mt_0256|>", "<|mt_0511|>", "<|im_end|>", "<|endoftext|>"])
    special += [tok.convert_tokens_to_ids(_code_tok(i)) for i in range(0, 512, 7)]
    targets = _text_targets() + ([] if args.skip_iou else _iou_targets())
    all_rows = [t for t in targets if t.rows is None]
    sub_rows = [t for t in targets if t.rows is not None]
    wrapped = wrap_rewards([t.fn for t in all_rows], tokenizer=tok, max_failure_rate=1.0)
    wrapped_sub = wrap_rewards([t.fn for t in sub_rows], tokenizer=tok, max_failure_rate=1.0)
    texts_only = [t for t in all_rows if "image" not in t.columns]
    timed = wrap_rewards([t.fn for t in texts_only], tokenizer=tok, timeout_s=5.0, max_failure_rate=1.0)
    pairs = [(f"wrapped {t.name}", t, w) for t, w in zip(all_rows, wrapped)]
    pairs += [(f"wrapped {t.name}", t, w) for t, w in zip(sub_rows, wrapped_sub)]
    pairs_timed = [(f"wrapped+timeout {t.name}", t, w) for t, w in zip(texts_only, timed)]
    stats = {name: Stat(name) for name, _, _ in pairs + pairs_timed}
    dstat = Stat("decode_raw")
    r = random.Random(gen_seed + 1)
    gen = Gen(gen_seed + 2, images)
    gen.DIRTY_BATCH = 0.0  # valid GT only: the GT parsing is fuzzed in the direct run
    ids_kinds = Counter()
    for b, (comps, sources, rows) in enumerate(gen.batches(args.n_wrapped, args.batch)):
        enc = _encode(tok, comps)
        ids = [_mutate_ids(r, x, vocab, special) for x in enc]
        ids_kinds["with out-of-vocab ids"] += sum(1 for x in ids if any(not 0 <= i < vocab for i in x))
        ids_kinds["all"] += len(ids)

        raw, err = dstat.timed(lambda: _attempt(runtime.decode_raw, ids, tok))
        dstat.calls += 1
        dstat.items += len(ids)
        if err is not None:
            raw = []
            for x in ids:
                try:
                    raw.append(runtime.decode_raw([x], tok)[0])
                except Exception as e:  # noqa: BLE001
                    dstat.error(e, {"completion_ids": x})
                    raw.append(None)
        if any(t is None for t in raw):
            continue
        for name, t, w in pairs + (pairs_timed if b % 4 == 0 else []):
            keep = list(range(len(comps))) if t.rows is None else [i for i, row in enumerate(rows) if t.rows(row)]
            if not keep:
                continue
            s = stats[name]
            if t.rows is None:  # TRL hands every reward the same list objects: raw text is decoded once
                cs, ii, rr, rw = comps, ids, rows, raw
            else:
                cs, ii, rr, rw = ([x[i] for i in keep] for x in (comps, ids, rows, raw))
            cols = {c: [row[c] for row in rr] for c in t.columns}

            out, e = s.timed(lambda: _attempt(w, prompts=["p"] * len(cs), completions=cs, completion_ids=ii, **cols))
            s.calls += 1
            s.items += len(cs)
            if e is not None:
                s.error(e, {"completion_ids": ii[0], "raw": rw[0]})
                continue
            for v, x, txt, ex, row in zip(out, ii, rw, _bare(t, rw, cols), rr):
                repro = {"completion_ids": x, "raw": txt}
                if isinstance(ex, _Raised):  # the reward itself raises on the decoded text
                    s.error(ex.e, repro)
                    if v is not None:
                        s.problem("invalid", f"wrapped {v!r} where the bare reward raised", repro)
                elif v is None and ex is not None:  # the wrapper failed a sample the bare reward scores
                    s.error(RuntimeError(f"wrapper scored None (failures {dict(w.failures)}, last "
                                         f"{list(w.last_error.values())[-1:]!s:.200})"), repro)
                elif v != ex:
                    s.problem("invalid", f"wrapped {v!r} != bare {ex!r} on the decoded text", repro)
                elif msg := _valid_value(v, t.none_ok(row)):
                    s.problem("invalid", msg, repro)
    stats_out.append(dstat)
    stats_out.extend(stats.values())
    return ids_kinds, tok


# ---------------------------------------------------------------------------------------------- output


def shrink(fails, text, budget=3000):
    """A shorter string that still fails the same way (greedy chunk removal, bounded)."""
    if not isinstance(text, str):
        return text
    chunk = max(1, len(text) // 2)
    while chunk >= 1 and budget > 0:
        i, changed = 0, False
        while i < len(text) and budget > 0:
            cand = text[:i] + text[i + chunk :]
            budget -= 1
            if fails(cand):
                text, changed = cand, True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    return text


def _short(x, limit=300):
    s = repr(x)
    return s if len(s) <= limit else f"{s[:limit]}... ({len(x) if hasattr(x, '__len__') else '?'} chars/items)"


def report(stats, no_shrink):
    print()
    head = f"{'function':48s} {'calls':>9s} {'completions':>12s} {'exceptions':>10s} {'gt-errors':>9s} " \
           f"{'invalid':>7s} {'oracle':>6s} {'compl/s cpu':>12s} {'compl/s wall':>12s} {'max ms/call':>11s}"
    print(head)
    print("-" * len(head))
    for s in stats:
        cps = s.items / s.cpu if s.cpu > 0 else float("inf")
        wps = s.items / s.wall if s.wall > 0 else float("inf")
        print(f"{s.name:48s} {s.calls:9,d} {s.items:12,d} {s.exceptions:10,d} {s.gt_errors:9,d} {s.invalid:7,d} "
              f"{s.oracle:6,d} {cps:12,.0f} {wps:12,.0f} {s.max_call * 1e3:11.1f}")
    print("  (gt-errors: malformed dataset rows that raised a clear ValueError, expected; exceptions on valid rows"
          " and any other exception are failures)")
    for s in stats:
        if s.gt_messages:
            print(f"\n{s.name}: gt-error messages (expected: clear ValueError), first {len(s.gt_messages)} distinct:")
            for kind, msg in s.gt_messages:
                print(f"   {kind}: {msg}")
    for s in stats:
        if not s.errors and not s.problems:
            continue
        print(f"\n{s.name}: FAILURES (first distinct messages, with reproducers)")
        for (kind, msg), (count, repro) in s.errors.items():
            print(f"   {kind}: {msg}  [x{count}]")
            single = repro.pop("_single", None)
            if single is not None and not no_shrink and isinstance(repro["completion"], str):
                target, sub = single

                def fails(text, target=target, sub=sub, kind=kind):
                    try:
                        target.fn(prompts=["p"], completions=[text], **sub)
                    except Exception as e:  # noqa: BLE001
                        return type(e).__name__ == kind
                    return False

                repro["shrunk completion"] = shrink(fails, repro["completion"])
            for k, v in repro.items():
                print(f"      {k}: {_short(v)}")
        if s.other_errors:
            print(f"   ... and {s.other_errors} exceptions with other messages")
        for (kind, msg), repro in s.problems.items():
            print(f"   {kind}: {msg}")
            for k, v in repro.items():
                print(f"      {k}: {_short(v)}")


def _proportions(title, counter):
    total = sum(counter.values()) or 1
    items = ", ".join(f"{k} {v / total:.1%}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1]))
    print(f"{title} ({total:,}): {items}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="adversarial completions (default 1,000,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=512, help="completions per reward call (as TRL calls rewards)")
    p.add_argument("--n-wrapped", type=int, default=None, help="completions for the wrapped run (default n/100, at least one batch)")
    p.add_argument("--skip-iou", action="store_true", help="no mask_iou (no torch)")
    p.add_argument("--skip-wrapped", action="store_true")
    p.add_argument("--no-shrink", action="store_true", help="print failing completions as found, not shrunk")
    args = p.parse_args(argv)
    if args.n_wrapped is None:
        args.n_wrapped = max(args.batch, args.n // 100)
    if not args.skip_iou:
        import torch

        torch.set_num_threads(1)
    from PIL import Image

    rng = np.random.default_rng(args.seed)
    images = [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for h, w in ((16, 16), (24, 32), (37, 23))]
    images.append((rng.random((20, 28, 3)) * 255).astype(np.uint8))  # an HxWxC array is a valid image too
    print(f"fuzz: {args.n:,} completions, seed {args.seed}, batches of {args.batch} (groups of {GROUP} per row), "
          f"wrapped subset {0 if args.skip_wrapped else args.n_wrapped:,}, mask_iou {'off' if args.skip_iou else 'on'}")
    t_start, c_start = time.perf_counter(), time.process_time()
    codec = [(Stat("codec.parse_masks"), parse_masks, _check_pairs), (Stat("codec.mask_groups"), mask_groups, _check_groups)]
    targets = _text_targets() + ([] if args.skip_iou else _iou_targets())
    gen = Gen(args.seed, images)
    gen_stat = Stat("(generation)")
    batches = gen.batches(args.n, args.batch)
    b = 0
    stop = []  # SIGTERM / Ctrl-C: finish the batch, then report what ran (a partial run exits 2)

    def _stop(signum, frame):
        stop.append(signum)

    previous = signal.signal(signal.SIGTERM, _stop), signal.signal(signal.SIGINT, _stop)
    while not stop:
        item = gen_stat.timed(lambda: next(batches, None))
        if item is None:
            break
        comps, sources, rows = item
        for stat, fn, check in codec:
            run_codec(stat, fn, check, comps + (NON_STRINGS if b % 64 == 0 else []))
        for t in targets:
            run_reward(t, comps, sources, rows)
        b += 1
        if args.n >= 100_000 and b % 200 == 0:
            el = time.perf_counter() - t_start
            print(f"   ... {min(args.n, b * args.batch):,} completions, {el:.0f} s wall, "
                  f"{time.process_time() - c_start:.0f} s cpu", flush=True)
    direct_wall, direct_cpu = time.perf_counter() - t_start, time.process_time() - c_start
    _proportions("completion generators", gen.source_counts)
    _proportions("mutations applied to corrupted completions", gen.mutation_counts)
    _proportions("answer/row kinds (rows; each row is shared by a group of 8 completions)", gen.row_counts)
    print(f"direct run: {direct_wall:.1f} s wall, {direct_cpu:.1f} s cpu (generation {gen_stat.cpu:.1f} s cpu)")
    stats = [s for s, _, _ in codec] + [t.stat for t in targets]
    if stop:
        print(f"INTERRUPTED (signal {stop[0]}) after {sum(gen.source_counts.values()):,} completions: partial results, no wrapped run")
    if not args.skip_wrapped and not stop:
        t0, c0 = time.perf_counter(), time.process_time()
        wstats = []
        kinds, tok = run_wrapped(args, args.seed, images, wstats)
        print(f"wrapped run: {kinds['all']:,} completions as token ids of the tiny tokenizer (vocab {len(tok)}), "
              f"{kinds['with out-of-vocab ids'] / max(1, kinds['all']):.1%} with out-of-vocab ids; "
              f"{time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s cpu")
        stats += wstats
    report(stats, args.no_shrink)
    failed = sum(s.failures for s in stats)
    print(f"\ntotal: {time.perf_counter() - t_start:.1f} s wall, {time.process_time() - c_start:.1f} s cpu; "
          f"failures {failed} (target 0); gt-errors {sum(s.gt_errors for s in stats)} (expected)")
    signal.signal(signal.SIGTERM, previous[0])
    signal.signal(signal.SIGINT, previous[1])
    return 1 if failed else (2 if stop else 0)


if __name__ == "__main__":
    sys.exit(main())
