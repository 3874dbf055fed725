"""SAMTok mask tokenizer: masks <-> two discrete codes <-> text.

``tokenizer.codec`` is pure Python; the torch model (``MaskTokenizer``) is imported on first use so
that parsing mask text never pulls in torch.
"""

from tokenizer.codec import MASK_TOKENS, format_mask, parse_masks

__all__ = ["MASK_TOKENS", "MaskTokenizer", "format_mask", "parse_masks"]


def __getattr__(name):
    if name == "MaskTokenizer":
        from tokenizer.model import MaskTokenizer

        return MaskTokenizer
    raise AttributeError(f"module 'tokenizer' has no attribute {name!r}")
