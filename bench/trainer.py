"""Seconds per GRPO step: our trainer (rl.grpo.trainer: staged checkpoints hook, wrapped rewards with raw-text decoding,
timeouts, phase timings and logging) against a plain TRL ``GRPOTrainer`` with the bare reward, same tiny policy,
data, prompt order and reward, measured side by side in one run (alternating rounds, so machine load drifts hit
both alike). The reward reads token ids (ours decodes completions with their mask tokens, TRL without them, so a
text reward would score the two differently), so both do the same training: the script checks that every run of
both ends in the same weights, and that the weights moved, so the ratio is our overhead and nothing else. Both run
the dense CPU LM head (``rl.grpo.lm_head``, installed process-wide by the first of ours; ``bench/lm_head.py``
measures it on its own).

    python bench/trainer.py [--steps 20] [--rounds 2]

Prints the median s/step of each and the ratio ours / plain (target <= 1.02).

On a GPU, ``--qwen-3b`` instead runs ``recipes/gres_grpo.yaml`` (bf16, HF generate) on a randomly initialised
policy of the Qwen2.5-VL-3B architecture with the real Qwen vocabulary (no download: the architecture is written
out below) and prints s/step, generated tokens/s, each step's phase timings (``timing_s/*``) and peak GPU memory.
``--grad-accum`` sets gradient_accumulation_steps: 8 (the default) is the released update, 16 completions per
micro-step and one generate call of 128 completions per update; 1 is one micro-step per update.

    python bench/trainer.py --qwen-3b [--steps 2] [--grad-accum 8] [--compile-rollouts]
    python bench/trainer.py --trim [--steps 20] [--rounds 2]   # padding-only columns dropped or kept, side by side

``--compile-rollouts`` adds the recipe setting ``rollout.compile`` (with ``grpo.cache_implementation=static``): the
same update with compiled decoding, whose first step includes the compilation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], None

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)


class LogCollector(TrainerCallback):
    """Each logged row that carries the reward (reward, completions/mean_length, ...), with its step."""

    def __init__(self):
        self.rows = []

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "reward" in logs:
            self.rows.append({"step": state.global_step, **logs})


class CentroidCodes:
    """Deterministic stand-in encoder for the GT answers (the reward is textual; the codes' meaning is irrelevant)."""

    def encode(self, image, masks, boxes=None):
        rows = [[int(np.nonzero(m)[0].mean() // 14) * 8 + int(np.nonzero(m)[1].mean() // 14), 7] for m in masks]
        return torch.tensor(rows, dtype=torch.long).reshape(-1, 2)


def token_id_reward(completions, completion_ids, **kwargs):
    """A reward with spread from the token ids alone, so both trainers score a completion alike and the policy moves."""
    return [sum(ids) % 7 / 7 for ids in completion_ids]


class TrainingWork(TrainerCallback):
    """What the training side of each step computed, counted at the policy's scoring forwards (the calls TRL makes
    with ``labels``; generation's forwards carry none): tokens (real and padded), scored completion tokens and image
    patches, split by whether autograd was on (the loss's forward, whose backward follows) or off (old-policy and
    reference log-probs). ``flops`` turns them into matmul FLOPs: 2 per parameter and token forward, 4 more backward,
    2 more where gradient checkpointing recomputes the layers; the frozen vision tower forward only; the LM head on
    the scored tokens only, as TRL's fused head computes them on a GPU. Attention's own FLOPs (about 1% at these
    lengths) are left out, so the bound is a floor."""

    def __init__(self):
        self.steps, self._now = [], self._zero()

    @staticmethod
    def _zero():
        return {mode: dict.fromkeys(("tokens", "padded", "scored", "patches", "calls"), 0) for mode in ("grad", "no_grad")}

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.checkpointing = bool(args.gradient_checkpointing)
        inner = model.model
        embeddings = model.get_input_embeddings().weight.numel()
        self.n_body = sum(p.numel() for p in inner.language_model.parameters()) - embeddings
        self.n_head = model.get_output_embeddings().weight.numel()
        self.n_vision = sum(p.numel() for p in inner.visual.parameters())
        # TRL's reference model (beta > 0) is another instance of the policy's class, which callbacks are not given.
        import gc

        for m in [model, *(o for o in gc.get_objects() if type(o) is type(model) and o is not model)]:
            m.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        labels, mask = kwargs.get("labels"), kwargs.get("attention_mask")
        if labels is None or mask is None:
            return
        c = self._now["grad" if torch.is_grad_enabled() else "no_grad"]
        c["tokens"] += int(mask.sum())
        c["padded"] += mask.numel()
        c["scored"] += int((labels != -100).sum())
        pixels = kwargs.get("pixel_values")
        c["patches"] += 0 if pixels is None else pixels.shape[0]
        c["calls"] += 1

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(self._now)
        self._now = self._zero()

    def flops(self, c: dict, backward: bool) -> float:
        body = 2 + (4 + (2 if self.checkpointing else 0) if backward else 0)
        head = 6 if backward else 2
        return body * self.n_body * c["tokens"] + head * self.n_head * c["scored"] + 2 * self.n_vision * c["patches"]


class StepReport(TrainerCallback):
    """Prints each logged step: seconds, generated tokens/s, phase timings (``timing_s/*``), and the training side
    against its FLOP bound at the measured matmul rate (item 4 of the GPU step)."""

    def __init__(self, timer: StepTimer, work: TrainingWork, tflops: float, completions: int):
        self.timer, self.work, self.tflops, self.completions = timer, work, tflops, completions

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "completions/mean_length" not in logs:
            return
        step, t = state.global_step, self.timer.times[-1]
        tokens = logs["completions/mean_length"] * self.completions
        print(f"step {step}: {t:.2f} s, {tokens:.0f} generated tokens, {tokens / t:.0f} tokens/s over the whole step")
        phases = {k.split("/", 1)[1]: v for k, v in logs.items() if k.startswith("timing_s/")}
        print(f"step {step} phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
        for phase, mode in (("forward_backward", "grad"), ("logprobs", "no_grad")):
            c = self.work.steps[-1][mode]
            if not c["calls"] or phase not in phases:
                continue
            bound = self.work.flops(c, backward=mode == "grad") / (self.tflops * 1e12)
            print(f"step {step} {phase}: {phases[phase]:.2f} s, FLOP bound {bound:.3f} s "
                  f"({phases[phase] / bound:.1f}x); {c['calls']} forwards, {c['tokens']} tokens of {c['padded']} "
                  f"padded ({c['tokens'] / c['padded']:.0%} real), {c['scored']} scored, {c['patches']} image patches",
                  flush=True)


def matmul_tflops(device: str, dtype) -> float:
    """The card's measured dense matmul rate (TFLOP/s): the bound's denominator."""
    n = 8192 if device == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    t, reps = time.perf_counter(), 20 if device == "cuda" else 3
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def recipe_for(run_dir: Path, steps: int):
    from rl.recipe.config import load_recipe

    return load_recipe(ROOT / "recipes" / "shapes_gres.yaml", [
        f"run.output_dir={run_dir}", "run.report_to=[none]", "sft.enabled=false", f"grpo.max_steps={steps}",
        "grpo.save_strategy=no", "grpo.logging_steps=1000", "grpo.max_completion_length=32",
        "data.shapes.n_train=64", "data.shapes.n_eval=0", "monitor.eval_steps=0",
        # TRL's uniform prompt order on both sides: with the recipe's stratified order ours would train on other
        # prompts, generate completions of other lengths, and the ratio would measure the prompts, not the overhead.
        "sampling.stratify=false",
        # One reward on both sides: ours wraps it in the reward runtime, the plain trainer gets it bare.
        f"rewards=[{{name: '{__name__}:token_id_reward'}}]",
    ])


def train_ours(recipe, dataset, callbacks=()):
    """Our trainer on ``dataset``, from the recipe's policy built afresh under seed 0; the trained model."""
    from rl.grpo import trainer as tr
    from rl.policy import model as rl_policy

    torch.manual_seed(0)
    model, processor = rl_policy.prepare_policy(recipe, recipe.run.output_dir)
    tr.build_trainer(recipe, recipe.run.output_dir, dataset, None, model, processor, callbacks).train()
    return model


def run_ours(recipe, dataset):
    timer = StepTimer()
    model = train_ours(recipe, dataset, [timer])
    return timer.times, weights_digest(model)


def weights_digest(model) -> str:
    """A digest of every parameter: equal digests mean the two trainers did the same training, bit for bit."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def run_plain(recipe, dataset):
    from trl import GRPOTrainer

    from rl.grpo import trainer as tr
    from rl.policy import trainable
    from rl.policy.model import load_policy

    timer = StepTimer()
    torch.manual_seed(0)
    model, processor = load_policy(Path(recipe.run.output_dir) / "policy-init")
    trainable.freeze_vision_tower(model)  # same trainable parameters as ours
    trainer = GRPOTrainer(model=model, reward_funcs=[token_id_reward], args=tr.grpo_config(recipe, recipe.run.output_dir),
                          train_dataset=dataset, processing_class=processor, callbacks=[timer])
    trainer.train()
    return timer.times, weights_digest(model)


def qwen25vl_3b(path: Path, device: str = "cuda", shrink: int = 1) -> Path:
    """A random-init policy with Qwen2.5-VL-3B-Instruct's architecture, saved to ``path`` in bf16.
    ``shrink`` > 1 divides widths and depths (a CPU smoke check of this script)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from rl.policy.model import build_processor, build_tokenizer, save_policy

    tok = build_tokenizer("qwen")  # real Qwen vocabulary + the 514 mask tokens
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=2048 // shrink, intermediate_size=11008 // shrink,
            num_hidden_layers=36 // shrink, num_attention_heads=16 // shrink, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        ),
        vision_config=dict(
            depth=32 // shrink, hidden_size=1280 // shrink, intermediate_size=3420 // shrink, num_heads=16 // shrink,
            out_hidden_size=2048 // shrink, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
        ),
        tie_word_embeddings=True, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    save_policy(model, build_processor(tok, "qwen2_5_vl", image_size=448), path)
    n = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    print(f"random Qwen2.5-VL-3B architecture: {n / 1e9:.2f} B parameters, vocabulary {len(tok)}")
    return path


def run_qwen_3b(steps: int = 2, shrink: int = 1, grad_accum: int = 8, compile_rollouts: bool = False) -> int:
    from envs.base import rows_to_dataset
    from rl.grpo import train
    from rl.grpo.data import shapes_rows
    from rl.recipe.config import load_recipe

    tmp = Path(tempfile.mkdtemp())
    cuda = torch.cuda.is_available()
    policy = qwen25vl_3b(tmp / "policy", "cuda" if cuda else "cpu", shrink)
    probe = load_recipe(ROOT / "recipes" / "shapes_gres.yaml", ["data.shapes.image_size=448"])
    rows_to_dataset(shapes_rows(probe, "train", 64, CentroidCodes())).save_to_disk(str(tmp / "data"))
    recipe = load_recipe(ROOT / "recipes" / "gres_grpo.yaml", [
        f"model.path={policy}", f"data.train={tmp / 'data'}", f"run.output_dir={tmp / 'run'}", "run.report_to=[none]",
        "run.resume=false", f"grpo.max_steps={steps}", f"grpo.gradient_accumulation_steps={grad_accum}",
        "grpo.save_strategy=no", "grpo.logging_steps=1",
        "grpo.log_completions=false", "grpo.dataloader_num_workers=0", "grpo.disable_tqdm=true",
        *(["grpo.cache_implementation=static", "rollout.compile=true"] if compile_rollouts else []),
    ])
    if not cuda:
        recipe.grpo.update(bf16=False, max_completion_length=16)
    tflops = matmul_tflops("cuda" if cuda else "cpu", torch.bfloat16 if cuda else torch.float32)
    g = recipe.grpo
    completions = g["per_device_train_batch_size"] * grad_accum  # per optimizer step, on this device
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}; {completions} completions/step "
          f"({completions // g['num_generations']} prompts x {g['num_generations']}, gradient accumulation "
          f"{grad_accum}), max {g['max_completion_length']} new tokens"
          + ("; rollouts with a static KV cache and compiled decoding (rollout.compile)" if compile_rollouts else ""),
          flush=True)
    timer, work = StepTimer(), TrainingWork()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # Each step is printed as soon as it is logged: a run cut short by a time limit keeps its finished steps.
    train.run(recipe, callbacks=[timer, work, StepReport(timer, work, tflops, completions)])
    print(f"matmul rate: {tflops:.1f} TFLOP/s measured; parameters: {work.n_body / 1e9:.2f} B in the language model's "
          f"layers, {work.n_head / 1e9:.2f} B in the LM head, {work.n_vision / 1e9:.2f} B in the vision tower (frozen); "
          f"gradient checkpointing {'on' if work.checkpointing else 'off'}")
    if cuda:
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0


def run_trim(steps: int, rounds: int) -> int:
    """Forward-backward seconds per step with and without dropping each micro-step's padding-only columns
    (``rl.grpo.batch.trim_padding``), side by side in alternating rounds, with the tokens each trained on."""
    from envs.base import rows_to_dataset
    from rl.grpo import trainer as tr
    from rl.grpo.batch import trim_padding
    from rl.grpo.data import shapes_rows
    from rl.policy.model import build_tokenizer

    eos = build_tokenizer("tiny").eos_token_id
    times, work = {True: [], False: []}, {True: [0, 0], False: [0, 0]}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = recipe_for(Path(tmp) / "run", steps)
        # 4 micro-steps of 8 per generation batch of 4 prompts x 8, as a released update slices 128 into 8 x 16; the
        # end of sequence made likely, so that completions end at many lengths as a trained policy's do.
        recipe.grpo.update(per_device_train_batch_size=8, gradient_accumulation_steps=4,
                           logging_steps=1, max_completion_length=64,
                           generation_kwargs={"sequence_bias": [[[eos], 6.0]]})
        dataset = rows_to_dataset(shapes_rows(recipe, "train", max(64, 4 * steps), CentroidCodes()))
        for _ in range(rounds):
            for trim in (True, False):
                tr.trim_padding = trim_padding if trim else (lambda inputs: inputs)
                counted, logs = TrainingWork(), LogCollector()
                train_ours(recipe, dataset, [counted, logs])
                times[trim] += [row["timing_s/forward_backward"] for row in logs.rows][2:]  # first steps: warm-up
                work[trim][0] += sum(c["grad"]["tokens"] for c in counted.steps)
                work[trim][1] += sum(c["grad"]["padded"] for c in counted.steps)
    tr.trim_padding = trim_padding
    print("tiny policy, 4 prompts x 8 generations per step in 4 micro-steps of 8, up to 64 new tokens, 1 thread")
    for trim in (True, False):
        real, padded = work[trim]
        print(f"{'trimmed' if trim else 'as TRL pads'}: forward-backward {statistics.median(times[trim]):.4f} s/step "
              f"(median of {len(times[trim])}), {padded} tokens of which {real / padded:.0%} real")
    print(f"ratio trimmed / as TRL pads: {statistics.median(times[True]) / statistics.median(times[False]):.3f} s, "
          f"{work[True][1] / work[False][1]:.3f} tokens")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="GRPO steps per run (default 20; --qwen-3b: 2)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--qwen-3b", action="store_true", help="GPU: gres_grpo.yaml on a random Qwen2.5-VL-3B")
    p.add_argument("--grad-accum", type=int, default=8, help="--qwen-3b: gradient accumulation (8: the released update)")
    p.add_argument("--compile-rollouts", action="store_true",
                   help="--qwen-3b: the recipe setting rollout.compile (static KV cache, compiled decoding)")
    p.add_argument("--trim", action="store_true",
                   help="instead: forward-backward with and without dropping each micro-step's padding-only columns")
    p.add_argument("--shrink", type=int, default=1, help=argparse.SUPPRESS)  # CPU smoke check of --qwen-3b
    args = p.parse_args(argv)
    if args.qwen_3b:
        return run_qwen_3b(steps=args.steps or 2, shrink=args.shrink, grad_accum=args.grad_accum,
                           compile_rollouts=args.compile_rollouts)
    args.steps = args.steps or 20
    torch.set_num_threads(1)
    if args.trim:
        return run_trim(args.steps, args.rounds)
    from envs.base import rows_to_dataset
    from rl.grpo.data import shapes_rows

    with tempfile.TemporaryDirectory() as tmp:
        recipe = recipe_for(Path(tmp) / "run", args.steps)
        # One epoch of prompts for every step: from the second epoch on, ours draws each epoch's order from seed +
        # epoch (so that a resumed run replays it) and TRL continues one generator, so the prompts would differ.
        from rl.grpo.trainer import grpo_config

        g = grpo_config(recipe, recipe.run.output_dir)
        prompts = args.steps * g.per_device_train_batch_size * g.gradient_accumulation_steps // g.num_generations
        dataset = rows_to_dataset(shapes_rows(recipe, "train", max(64, prompts), CentroidCodes()))
        ours, plain, digests = [], [], set()
        for _ in range(args.rounds):
            for times, run in ((ours, run_ours), (plain, run_plain)):
                seconds, digest = run(recipe, dataset)
                times += seconds[2:]  # first steps: warm-up
                digests.add(digest)
        from rl.policy.model import load_policy

        start = weights_digest(load_policy(Path(tmp) / "run" / "policy-init")[0])
    mo, mp = statistics.median(ours), statistics.median(plain)
    print("tiny policy (hidden 64, 2 layers, tiny vocab), 4 prompts x 8 generations, max 32 new tokens, 1 thread")
    print(f"ours  (rl.grpo.trainer.SamtokGRPOTrainer + wrapped rewards): {mo:.4f} s/step (median of {len(ours)})")
    print(f"plain (trl.GRPOTrainer + bare reward):                 {mp:.4f} s/step (median of {len(plain)})")
    print(f"ratio ours / plain: {mo / mp:.3f} (target <= 1.02)")
    # Same weights after every run: the two did the same work (same prompts, completions and updates), so the ratio
    # is the cost of what ours adds and nothing else.
    same = len(digests) == 1
    print(f"same weights after {args.steps} steps, every run of both: {'yes' if same else 'NO'}; "
          f"the weights moved: {'yes' if start not in digests else 'NO'}")
    if not same or start in digests:
        print("the two trainers did not do the same training: the ratio above is not our overhead alone")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
