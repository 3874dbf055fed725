"""The one place a mask-tokenizer spec becomes a ``MaskTokenizer``.

A spec is what recipes (``data.mask_tokenizer``), ``samtok-rl prepare|eval --tokenizer`` and the rewards'
``mask_tokenizer`` parameter take:

* a committed name (``PRETRAINED``): ``tiny16``, the shapes-world tokenizer with 2x16 codebooks (the shapes
  recipes' default: masks share codes as SAMTok's do), or ``tiny``, the earlier 2x256 one (nearly one code
  pair per mask), both in ``tokenizer/weights/<name>/``;
* ``random``: the tiny architecture untrained, seeded (smoke tests only);
* a folder: a saved ``MaskTokenizer`` (``config.json`` + ``model.safetensors``), or the released SAMTok files
  as every ``zhouyik/*-SAMTok*`` model repository ships them (``mask_tokenizer_256x2.pth`` next to
  ``sam2.1_hiera_large.pt``).
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"
PRETRAINED = ("tiny16", "tiny")
RANDOM = ("random", "random-tiny")
OFFICIAL_FILES = ("mask_tokenizer_256x2.pth", "sam2.1_hiera_large.pt")


def spec_folder(spec: str) -> Path | None:
    """The folder whose files define the tokenizer ``spec`` names (None for ``random``); raises on a bad spec."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a mask tokenizer spec must be a non-empty string, got {spec!r}")
    if spec in RANDOM:
        return None
    if spec in PRETRAINED:
        return WEIGHTS / spec
    path = Path(spec)
    if path.is_dir():
        return path
    raise ValueError(f"mask tokenizer {spec!r} is not one of {', '.join(PRETRAINED + RANDOM[:1])} or a folder "
                     f"(a saved MaskTokenizer, or the released {' + '.join(OFFICIAL_FILES)})")


def load_mask_tokenizer(spec: str, device=None, seed: int = 0):
    """The ``MaskTokenizer`` that ``spec`` names (see the module docstring), in eval mode on ``device``."""
    import torch

    from tokenizer.config import tiny
    from tokenizer.model import MaskTokenizer

    folder = spec_folder(spec)
    if folder is None:
        torch.manual_seed(seed)
        model = MaskTokenizer(tiny()).eval()
        return model.to(device) if device is not None else model
    if spec in PRETRAINED and not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} has no weights; {folder / 'README.md'} has the commands that rebuild them")
    if not (folder / "config.json").is_file() and all((folder / f).is_file() for f in OFFICIAL_FILES):
        model = MaskTokenizer.load_official(*(folder / f for f in OFFICIAL_FILES))
        return model.to(device) if device is not None else model
    return MaskTokenizer.from_pretrained(folder, device)
