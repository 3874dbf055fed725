"""Mask tokenizer throughput: masks/s for encode and decode, batched vs one mask per call, on CPU (or GPU).

Everything is measured side by side in one run, and the ratios are what to read (absolute numbers depend
on the machine and its load). Two cache states:

* cold: the image-feature cache is emptied before every call, so each call pays the image encoder;
* warm: the image's features are already cached (e.g. decoding the 8 completions of one prompt).

"one mask per call" in the cold state means N image-encoder passes; for N=32 on Hiera-T that is slow,
so it is only measured with ``--full``.

Usage: python bench/tokenizer.py [--configs tiny hiera_t] [--threads 1] [--device cpu] [--dtype fp32] [--full]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# Run as `python bench/tokenizer.py`, this file's folder comes first on sys.path and the file would
# shadow the `tokenizer` package; put the repository root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tokenizer import MaskTokenizer, config  # noqa: E402

SETUPS = {  # config, image size fed in (H, W), repeats
    "tiny": (config.tiny, (112, 112), 5),
    "hiera_t": (config.hiera_t, (480, 640), 2),
    "hiera_l": (config.official, (480, 640), 1),
}
COUNTS = (1, 8, 32)


def _inputs(hw, n, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    masks = np.zeros((n, *hw), bool)
    for i in range(n):
        y, x = rng.integers(0, hw[0] // 2), rng.integers(0, hw[1] // 2)
        masks[i, y:y + hw[0] // 4 + i % 7, x:x + hw[1] // 4] = True
    return image, masks


def _time(fn, repeats, cold, model):
    model.clear_cache()
    fn()  # untimed: first use of these shapes (kernel selection, allocator growth)
    times = []
    for _ in range(repeats):
        if cold:
            model.clear_cache()
        else:
            fn()  # make sure the features are cached
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(name: str, device: str, full: bool, dtype: torch.dtype = torch.float32) -> dict:
    factory, hw, repeats = SETUPS[name]
    if device.startswith("cuda"):
        repeats = max(repeats, 5)
    torch.manual_seed(0)
    model = MaskTokenizer(factory()).to(device, dtype).eval()
    image, masks = _inputs(hw, max(COUNTS))
    codes = model.encode(image, masks)
    model.decode(image, codes)  # warm-up (CUDA context, kernels)
    results = {}
    for cold in (True, False):
        for op in ("encode", "decode"):
            def one(i, k=1, op=op):
                return model.encode(image, masks[i:i + k]) if op == "encode" else model.decode(image, codes[i:i + k])

            for n in COUNTS:
                tb = _time(lambda: one(0, n), repeats, cold, model)
                if cold and n == max(COUNTS) and name != "tiny" and not full:
                    ts = float("nan")
                elif cold:  # every single-mask call pays the image encoder
                    ts = _time(lambda: [model.clear_cache() or one(i) for i in range(n)], max(1, repeats // 2), True, model)
                else:
                    ts = _time(lambda: [one(i) for i in range(n)], repeats, False, model)
                results[("cold" if cold else "warm", op, n)] = (tb, ts)
    return results


def report(name: str, res: dict) -> None:
    print(f"\n== {name} ==")
    print(f"{'cache':<5} {'op':<6} {'N':>3} {'batched ms':>11} {'masks/s':>9} {'1/call ms':>10} {'masks/s':>9} {'batched x':>10}")
    for (cache, op, n), (tb, ts) in res.items():
        speed = ts / tb if ts == ts else float("nan")
        print(f"{cache:<5} {op:<6} {n:>3} {tb * 1e3:>11.1f} {n / tb:>9.1f} {ts * 1e3:>10.1f} {n / ts:>9.1f} {speed:>10.2f}")
    for cache in ("cold", "warm"):
        r8 = res[(cache, "decode", 8)][0] / res[(cache, "decode", 1)][0]
        r32 = res[(cache, "decode", 32)][0] / res[(cache, "decode", 1)][0]
        ok = "meets" if r8 <= 1.3 else "misses"
        print(f"decode cost, 8 masks vs 1 ({cache} cache): {r8:.2f}x ({ok} the <= 1.3x target); 32 vs 1: {r32:.2f}x")
    g = res[("cold", "decode", 1)][0] + 7 * res[("warm", "decode", 1)][0]
    print(f"8 completions of one prompt, one mask each, cache on: {g / (8 * res[('cold', 'decode', 1)][0]):.2f}x "
          f"the time of 8 cold calls")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["tiny", "hiera_t"], choices=sorted(SETUPS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--full", action="store_true", help="also time N=32 single-mask cold calls on large configs")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device={where} dtype={args.dtype} threads={args.threads} torch={torch.__version__}")
    for name in args.configs:
        report(name, bench(name, args.device, args.full, dtype))


if __name__ == "__main__":
    main()
