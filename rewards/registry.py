"""Resolve a reward from a recipe: a built-in name, ``package.module:function`` or ``path/to/file.py:function``.

A resolved object that takes ``completions`` is a reward and is used as is; anything else is a factory and
is called with the recipe's parameters (so users can write configurable rewards the same way we do).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path


def _builtins() -> dict:
    # Imported here so that listing names never imports torch (mask_iou does, lazily, when built).
    from rewards import answer_match, format, iou, latent

    return {
        "answer_match": answer_match.answer_match,
        "no_repeat": answer_match.no_repeat_reward,
        "mask_format": format.mask_format,
        "gres_format": format.gres_format,
        "gcg_format": format.gcg_format,
        "mask_iou": iou.mask_iou,
        "latent_match": latent.LatentMatch,
    }


def builtin_names() -> list[str]:
    return sorted(_builtins())


def resolve(spec: str):
    """The object ``spec`` names (a reward or a factory), not built. Fails with the list of valid names."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a reward spec must be a non-empty string, got {spec!r}")
    builtins = _builtins()
    if spec in builtins:
        return builtins[spec]
    if ":" in spec:
        return _load(spec)
    raise ValueError(
        f"unknown reward {spec!r}; valid built-in rewards: {', '.join(sorted(builtins))}; "
        "or give 'package.module:function' or 'path/to/file.py:function'"
    )


def check_params(spec: str, params: dict) -> None:
    """Raise ``ValueError`` when ``params`` do not fit the reward ``spec`` names, as ``get_reward`` would.

    A factory that loads a model (``builds_model = True``: mask_iou, latent_match) only has its parameters
    bound to its signature; any other is built, so that its own value checks run too.
    """
    obj = resolve(spec)
    if getattr(obj, "builds_model", False):
        _bind(obj, spec, params)
    else:
        _build(obj, spec, params)


def needs_mask_tokenizer(spec: str) -> bool:
    """Whether the reward ``spec`` names decodes or embeds masks: its factory takes a ``mask_tokenizer`` parameter
    (mask_iou, latent_match, and any user factory that declares one). A recipe passes its own there."""
    try:
        return "mask_tokenizer" in inspect.signature(resolve(spec)).parameters
    except (TypeError, ValueError):
        return False


def get_reward(spec: str, **params):
    """The reward function named by ``spec``, built with ``params``. Fails with the list of valid names."""
    obj = resolve(spec)
    fn = _build(obj, spec, params)
    if not callable(fn):
        raise TypeError(f"reward {spec!r} did not produce a callable (got {type(fn).__name__})")
    return fn


def build_rewards(items) -> tuple[list, list[float]]:
    """Rewards and weights from a recipe list of ``{"name": spec, "weight": float, "params": {...}}``."""
    funcs, weights = [], []
    for i, item in enumerate(items or []):
        item = dict(item)
        if "name" not in item:
            raise ValueError(f"rewards[{i}]: missing 'name' (a built-in name or 'module:function')")
        unknown = set(item) - {"name", "weight", "params"}
        if unknown:
            raise ValueError(f"rewards[{i}] ({item['name']}): unknown keys {sorted(unknown)}; use name, weight, params")
        weight = item.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or weight != weight:
            raise ValueError(f"rewards[{i}] ({item['name']}): weight must be a number, got {weight!r}")
        funcs.append(get_reward(item["name"], **dict(item.get("params") or {})))
        weights.append(float(weight))
    if not funcs:
        raise ValueError("no rewards configured: give at least one entry under 'rewards'")
    return funcs, weights


def _is_reward(obj) -> bool:
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False
    return "completions" in params


def _build(obj, spec: str, params: dict):
    if _is_reward(obj):
        if params:
            raise ValueError(f"reward {spec!r} is a reward function, not a factory: it takes no params (got {sorted(params)})")
        return obj
    _bind(obj, spec, params)
    return obj(**params)


def _bind(obj, spec: str, params: dict) -> None:
    try:
        inspect.signature(obj).bind(**params)
    except TypeError as e:
        raise ValueError(f"bad params for reward {spec!r}: {e}") from None


def _load(spec: str):
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ValueError(f"reward spec {spec!r} must look like 'package.module:function' or 'path/to/file.py:function'")
    if target.endswith(".py") or "/" in target:
        module = _load_file(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ValueError(f"reward {spec!r}: cannot import module {target!r}: {e}") from e
    if not hasattr(module, attr):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ValueError(f"reward {spec!r}: {target!r} has no attribute {attr!r}; callables there: {', '.join(names)}")
    return getattr(module, attr)


def _load_file(path: Path):
    path = path.expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"reward file not found: {path}")
    # A stable, unique module name per file, so two files called rewards.py do not collide.
    name = f"_samtok_user_reward_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module
