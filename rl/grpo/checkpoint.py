"""Atomic checkpoints: a checkpoint directory either is complete or does not exist under its final name.

The HF Trainer writes ``checkpoint-N`` file by file; a crash halfway leaves a directory that
``get_last_checkpoint`` happily resumes from. We let the Trainer write into ``<run>/.staging/`` instead and
rename the finished directory to ``<run>/checkpoint-N`` (one ``os.replace``, atomic on POSIX). The
``COMPLETE`` marker is written last inside staging, so even a checkpoint copied by hand can be checked.

Before the marker, ``MANIFEST.json`` records every file's size and SHA-256. A checkpoint whose files were
truncated or altered after it was committed (a full disk, a bad copy, a hand edit) no longer matches it:
``last_checkpoint`` skips it with a warning naming it and falls back to the previous one, and rotation
(``rotate``) counts only checkpoints that still match, so it never deletes the last good one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

STAGING = ".staging"
MARKER = "COMPLETE"
MANIFEST = "MANIFEST.json"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def staging_dir(run_dir: str | os.PathLike) -> str:
    return os.path.join(run_dir, STAGING)


def commit(run_dir: str | os.PathLike, name: str) -> Path:
    """Move ``<run>/.staging/<name>`` to ``<run>/<name>``, replacing an older copy of the same step."""
    src = Path(staging_dir(run_dir)) / name
    dst = Path(run_dir) / name
    (src / MANIFEST).write_text(json.dumps(manifest(src), indent=1))
    (src / MARKER).write_text("ok\n")
    if dst.exists():  # re-saving the same step (e.g. the final save after a periodic one)
        old = Path(staging_dir(run_dir)) / f"{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
    return dst


def complete_checkpoints(run_dir: str | os.PathLike, check_hashes: bool = False) -> list[Path]:
    """Complete checkpoints of a run, oldest first: a marker, and files that match the manifest (sizes, and
    with ``check_hashes`` their SHA-256 too). Half-written or damaged ones are left out."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_dir() and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found) if damage(p, check_hashes) is None]


def last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint whose every file still has the size and hash it was committed with."""
    for p in reversed(complete_checkpoints(run_dir)):  # sizes already match: now the hashes
        if damage(p, check_hashes=True) is None:
            return p
    return None


def manifest(ckpt: str | os.PathLike) -> dict:
    """``{relative path: {"size", "sha256"}}`` of every file under ``ckpt`` (marker and manifest excluded)."""
    ckpt = Path(ckpt)
    out = {}
    for f in sorted(ckpt.rglob("*")):
        rel = f.relative_to(ckpt).as_posix()
        if f.is_file() and rel not in (MARKER, MANIFEST):
            out[rel] = {"size": f.stat().st_size, "sha256": _sha256(f)}
    return out


def damage(ckpt: str | os.PathLike, check_hashes: bool = True) -> str | None:
    """What is wrong with a committed checkpoint's files, or None. Logged as a warning when something is."""
    ckpt = Path(ckpt)
    try:
        expected = json.loads((ckpt / MANIFEST).read_text())
    except (OSError, ValueError):
        problem = f"no readable {MANIFEST}"
    else:
        problem = None
        for rel, info in expected.items():
            f = ckpt / rel
            if not f.is_file():
                problem = f"{rel} is missing"
            elif f.stat().st_size != info["size"]:
                problem = f"{rel} has {f.stat().st_size} bytes, {info['size']} were written"
            elif check_hashes and _sha256(f) != info["sha256"]:
                problem = f"{rel} changed after it was written (SHA-256 differs)"
            if problem:
                break
    if problem:
        log.warning("skipping checkpoint %s: %s", ckpt, problem)
    return problem


def rotate(run_dir: str | os.PathLike, keep: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``keep``; returns what was deleted.

    Only checkpoints that still match their manifest are counted and kept, so a damaged newer checkpoint
    never pushes the last good one out; damaged ones older than the newest good one are deleted too.
    """
    if not keep or keep < 1:
        return []
    good = complete_checkpoints(run_dir, check_hashes=True)
    doomed = good[:-keep]
    newest = good[-1] if good else None
    for p in Path(run_dir).iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_dir() and p not in good and newest is not None and int(m.group(1)) < int(newest.name.split("-")[1]):
            doomed.append(p)  # damaged or unfinished, and a newer good one exists
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def clear_staging(run_dir: str | os.PathLike) -> None:
    """Drop what a crashed save left behind; called when a run starts."""
    shutil.rmtree(staging_dir(run_dir), ignore_errors=True)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored completely (resuming from part of it would lose training)."""


def has_full_weights(ckpt: str | os.PathLike) -> bool:
    """Whether ``ckpt`` holds a whole model saved by ``save_pretrained`` (not an adapter, not DeepSpeed's files)."""
    return any((Path(ckpt) / f).is_file() for f in (
        "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"))


def load_full_weights(model, ckpt: str | os.PathLike) -> None:
    """Copy the weights of ``ckpt`` into ``model`` in place, every parameter and buffer, or raise.

    ``from_pretrained`` is the one loader that knows how the checkpoint-format names map to the module names
    of this transformers version, so the checkpoint is read through it; then every tensor must fit.
    """
    import torch

    dtype = next(model.parameters()).dtype
    loaded, info = type(model).from_pretrained(str(ckpt), dtype=dtype, output_loading_info=True)
    problems = [f"{kind.replace('_', ' ')}: {sorted(map(str, info[kind]))}"
                for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)]
    state = loaded.state_dict()
    ours = model.state_dict()
    if not problems:
        missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
        problems += [f"missing keys: {missing}"] if missing else []
        problems += [f"unexpected keys: {unexpected}"] if unexpected else []
    if problems:
        raise CheckpointError(f"{ckpt}: its weights do not fit the policy being trained, refusing to resume from "
                              f"part of them; " + "; ".join(problems))
    wrong = [f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(t.shape)} here" for k, t in ours.items()
             if state[k].shape != t.shape]
    if wrong:
        raise CheckpointError(f"{ckpt}: its weights do not fit the policy being trained; mismatched shapes: {wrong}")
    with torch.no_grad():
        for name, tensor in ours.items():
            tensor.copy_(state[name])


def check_adapter_loaded(peft_model, ckpt: str | os.PathLike) -> None:
    """Raise unless the adapter file of ``ckpt`` holds exactly the trainable adapter's tensors, and they are loaded.

    The Trainer's PEFT path logs a warning for keys it could not place and carries on with fresh adapters.
    """
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(ckpt) / "adapter_model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: no adapter_model.safetensors for this LoRA policy")
    saved = load_file(path)
    ours = get_peft_model_state_dict(peft_model, adapter_name="default")
    missing, unexpected = sorted(set(ours) - set(saved)), sorted(set(saved) - set(ours))
    differ = [k for k in set(ours) & set(saved) if not torch.equal(ours[k].cpu(), saved[k].to(ours[k].dtype))]
    if missing or unexpected or differ:
        raise CheckpointError(f"{ckpt}: the adapter was not restored completely; missing keys: {missing}; "
                              f"unexpected keys: {unexpected}; not loaded: {sorted(differ)}")


# ---------------------------------------------------------------- the final policy


def save_final(trainer, processor, path: str | os.PathLike) -> Path:
    """Save a plain (merged) policy that ``rl.policy.model.load_policy`` reads: LoRA is merged into the weights. Under ZeRO-3 with LoRA
    the policy is rebuilt whole on rank 0 from the gathered state, since the Trainer would save the adapter alone
    and lose the trained mask-token rows."""
    from rl.grpo.distributed import barrier
    from rl.policy.model import save_policy

    path = Path(path)
    model = trainer.accelerator.unwrap_model(trainer.model)
    zero3 = trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    if zero3 and not hasattr(model, "merge_and_unload"):
        # Parameters are partitioned: the Trainer gathers them (stage3_gather_16bit_weights_on_model_save).
        trainer.save_model(str(path))
        if trainer.accelerator.is_main_process:
            processor.save_pretrained(str(path))
    elif zero3:
        # The Trainer would save the adapter alone and lose the trained mask-token rows: gather everything
        # (collective), then rank 0 rebuilds the LoRA policy whole, merges and saves it.
        state = trainer.accelerator.get_state_dict(trainer.deepspeed)
        if trainer.accelerator.is_main_process:
            save_policy(_merged_from_state(model, state), processor, path)
    else:
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        if trainer.accelerator.is_main_process:
            save_policy(model, processor, path)
    barrier()
    return path


def _merged_from_state(peft_model, state: dict):
    """An unpartitioned copy of ``peft_model`` holding ``state`` (its gathered state dict), LoRA merged."""
    import copy

    from peft import get_peft_model

    from rl.grpo.seam import without_zero3_init
    from rl.policy.model import load_policy

    with without_zero3_init():
        base, _ = load_policy(peft_model.get_base_model().name_or_path)
    model = get_peft_model(base, copy.deepcopy(peft_model.peft_config["default"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embedding
    others = [name for name in peft_model.peft_config if name != "default"]  # TRL's frozen "ref" adapter (beta > 0)
    unexpected = [k for k in unexpected if not any(f".{name}." in k for name in others)]
    if missing or unexpected:
        raise RuntimeError(f"gathered LoRA state does not fit the policy: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.merge_and_unload()
