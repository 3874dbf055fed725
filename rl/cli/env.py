"""``samtok-rl env [--recipe R [key=value ...]]``: what this environment has, and what a recipe needs that it lacks.

Prints the versions a bug report needs (Python, torch and its CUDA, transformers, trl, vLLM against TRL's
supported window, DeepSpeed and whether its ops can build, sam2, flash-attn, peft, accelerate, datasets) and the
GPUs. With ``--recipe`` it also checks what that recipe needs: it validates, its local files exist, vLLM for
``grpo.use_vllm``, a GPU for bf16/fp16 and for vLLM rollouts, DeepSpeed for a ``grpo.deepspeed`` config, flash-attn
for ``model.attn_implementation: flash_attention_2``, sam2 for the mask tokenizer, what ``rollout.compile``'s
compiler needs (Triton on a GPU, a C++ compiler on the CPU). Each problem is one line
starting ``problem:``; the exit status is 1 when there is any. Nothing is downloaded (hub ids are not checked).
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import platform
import shutil
import sys
from pathlib import Path

PACKAGES = ("torch", "transformers", "trl", "accelerate", "peft", "datasets", "deepspeed", "vllm", "sam2",
            "flash-attn", "omegaconf")


def version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def trl_vllm_window() -> tuple[str, str] | None:
    """TRL's supported vLLM range, from TRL's own ``vllm`` extra (``vllm<=0.31.0,>=0.22.0``)."""
    import re

    for req in md.requires("trl") or []:
        if req.startswith("vllm") and "extra ==" in req:
            lo, hi = re.search(r">=\s*([\d.]+)", req), re.search(r"<=?\s*([\d.]+)", req)
            if lo and hi:
                return lo.group(1), hi.group(1)
    return None


def _in_window(v: str, window) -> bool:
    from packaging.version import Version

    base = Version(Version(v).base_version)
    return Version(window[0]) <= base <= Version(window[1])


def deepspeed_ops() -> str:
    """Whether DeepSpeed's CPU Adam op (the first op a ZeRO run builds) is compatible here; never builds it."""
    try:
        from deepspeed.ops.op_builder import CPUAdamBuilder

        return "cpu_adam buildable" if CPUAdamBuilder().is_compatible(verbose=False) else "cpu_adam NOT buildable"
    except Exception as e:  # noqa: BLE001 - a report, not a failure
        return f"ops not checked ({type(e).__name__}: {str(e)[:80]})"


def gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, compute {p.major}.{p.minor}")
    return out


def report_lines() -> list[str]:
    import torch

    lines = [f"python {sys.version.split()[0]} ({platform.platform()})"]
    window = trl_vllm_window()
    for name in PACKAGES:
        v = version(name)
        note = ""
        if name == "torch" and v:
            note = f" (CUDA {torch.version.cuda or 'none'}, cuda available: {torch.cuda.is_available()})"
        if name == "vllm" and v and window:
            note = f" ({'inside' if _in_window(v, window) else 'OUTSIDE'} TRL's supported {window[0]}-{window[1]})"
        if name == "vllm" and not v and window:
            note = f" (TRL supports {window[0]}-{window[1]})"
        if name == "deepspeed" and v:
            note = f" ({deepspeed_ops()})"
        if name == "sam2" and v is None and importlib.util.find_spec("sam2") is not None:
            v = "importable (no metadata)"
        lines.append(f"{name} {v or 'not installed'}{note}")
    found = gpus()
    lines.append("gpus: " + ("; ".join(found) if found else "none"))
    return lines


def recipe_problems(path: str, overrides: list[str]) -> list[str]:
    """What ``path`` (with ``overrides``) needs that this environment lacks, one line each."""
    import torch

    from envs import is_generated
    from rl.recipe.config import RecipeError, load_recipe

    problems = []
    try:
        recipe = load_recipe(path, overrides)
    except RecipeError as e:  # listed, then the rest is checked on the recipe without its file checks
        problems += [line.strip().removeprefix("- ") for line in str(e).splitlines()[1:]] or [str(e)]
        try:
            recipe = load_recipe(path, overrides, check_files=False)
        except RecipeError:
            return problems
    g = recipe.grpo
    cuda = torch.cuda.is_available()
    if g.get("use_vllm"):
        if version("vllm") is None:
            problems.append("grpo.use_vllm=true needs vLLM in TRL's window: `make gpu-env` from a clone, or pip install 'samtok-rl[vllm]'")
        elif (w := trl_vllm_window()) and not _in_window(version("vllm"), w):
            problems.append(f"vllm {version('vllm')} is outside TRL's supported {w[0]}-{w[1]}")
        if not cuda:
            problems.append("grpo.use_vllm=true needs a GPU (vLLM rollouts in training are GPU-only here)")
    for key in ("bf16", "fp16"):
        if g.get(key) and not cuda:
            problems.append(f"grpo.{key}=true needs a GPU (none found); set grpo.{key}=false on the CPU")
    if g.get("bf16") and cuda and not torch.cuda.is_bf16_supported():
        problems.append("grpo.bf16=true but this GPU does not support bf16; use fp16")
    if g.get("deepspeed") and version("deepspeed") is None:
        problems.append("grpo.deepspeed is set but DeepSpeed is not installed")
    if recipe.model.attn_implementation == "flash_attention_2" and version("flash-attn") is None:
        problems.append("model.attn_implementation=flash_attention_2 needs flash-attn (or use sdpa)")
    if recipe.rollout.compile:  # torch.compile's inductor generates Triton kernels on a GPU, C++ on the CPU
        if cuda and importlib.util.find_spec("triton") is None:
            problems.append("rollout.compile=true needs Triton on a GPU (it ships with torch's CUDA wheels)")
        if not cuda and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
            problems.append("rollout.compile=true on the CPU needs a C++ compiler (g++ or clang++, or CXX)")
    from rewards.registry import needs_mask_tokenizer

    # Every reward whose factory takes a mask_tokenizer declares that it decodes masks (rewards.registry).
    users = [r.name for r in recipe.rewards if needs_mask_tokenizer(r.name)]
    users += ["the shapes world"] if is_generated(recipe.data.env) else []
    if users and importlib.util.find_spec("sam2") is None:
        problems.append(f"the mask tokenizer (needed by {', '.join(users)}) needs sam2: "
                        "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0")
    if recipe.model.path != "tiny" and not Path(recipe.model.path).exists():
        problems.append(f"model.path {recipe.model.path!r} is not a local folder: it must be a hub id "
                        "reachable (or cached) at train time; not checked here")
    return problems


def command(recipe: str | None = None, overrides: list[str] = ()) -> int:
    """``samtok-rl env``: the report, and with ``recipe`` what it needs that is missing (exit status 1 if any)."""
    for line in report_lines():
        print(line)
    if not recipe:
        return 0
    problems = recipe_problems(recipe, overrides)
    hard = [p for p in problems if "not checked here" not in p]
    for p in problems:
        print(("problem: " if p in hard else "note: ") + p)
    if not problems:
        print(f"recipe {recipe}: nothing missing")
    return 1 if hard else 0
