"""vLLM: the backend of `samtok-rl eval`, and the image prompts of TRL's colocated rollouts.

Without vLLM: the requests, sampling and engine arguments, and the CLI wiring through a stand-in engine
that serves each request with HF generate exactly as vLLM is asked to (un-expanded prompt + image).
With vLLM (`make test-vllm`): a real engine gives the HF path's completions token for token.
"""

import json
import sys
import types

import numpy as np
import pytest
import torch

from envs import get_env
from envs.base import load_image
from rl import cli
from rl.eval import vllm_backend
from rl.eval.evaluate import eval_rows
from rl.eval.generation import generate
from rl.grpo import vllm_rollout
from rl.policy.model import build_tiny_policy, load_policy, save_policy


def main(argv: list[str]) -> int:  # the `samtok-rl eval` command line
    return cli.main(["eval", *argv])


def _rows(name="shapes_gres", n=5):
    return eval_rows(get_env(name, eval_size=n, seed=3), "val")


def _sharp_policy(arch="qwen2_5_vl"):
    """A tiny policy with large random weights: its greedy completions vary with the image and the position,
    so a wrong image grid, rope position or prompt changes them (the default init emits one token forever)."""
    model, processor = build_tiny_policy(arch=arch, head_dim=32, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model, processor


def test_requests_are_the_hf_prompts_with_one_unexpanded_image_placeholder():
    _, processor = build_tiny_policy(head_dim=32)
    rows = _rows()
    reqs = vllm_backend.requests(processor, rows)
    assert len(reqs) == len(rows)
    for req, row in zip(reqs, rows):
        assert req["prompt"] == processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        assert req["prompt"].count("<|image_pad|>") == 1
        assert np.array_equal(np.asarray(req["multi_modal_data"]["image"]), np.asarray(load_image(row["image"])))


def test_sampling_is_greedy_keeps_special_tokens_and_suppresses_the_image_placeholder():
    _, processor = build_tiny_policy()
    tok = processor.tokenizer
    kw = vllm_backend.sampling_kwargs(tok, 64)
    assert kw["temperature"] == 0 and kw["max_tokens"] == 64 and kw["skip_special_tokens"] is False
    assert kw["logit_bias"] == {tok.convert_tokens_to_ids("<|image_pad|>"): -100.0}


def test_engine_arguments_on_gpu_and_cpu():
    gpu = vllm_backend.engine_kwargs("p", on_gpu=True)
    assert gpu["gpu_memory_utilization"] == 0.9 and gpu["limit_mm_per_prompt"] == {"image": 1}
    cpu = vllm_backend.engine_kwargs("p", on_gpu=False, cpu_kv_cache_gib=0.5)
    # On CPU the utilisation flag reserves host memory; a fixed KV cache is asked for instead.
    assert "gpu_memory_utilization" not in cpu and cpu["kv_cache_memory_bytes"] == 1 << 29
    assert vllm_backend.engine_kwargs("p", on_gpu=False, gpu_memory_utilization=0.3)["gpu_memory_utilization"] == 0.3


def test_backend_choice(monkeypatch):
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: False)
    assert vllm_backend.pick_backend("auto") == "hf"
    with pytest.raises(ValueError, match="vLLM is not installed.*samtok-rl\\[vllm\\]"):
        vllm_backend.pick_backend("vllm")
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert vllm_backend.pick_backend("auto") == "hf"  # vLLM on a CPU only when asked for
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert vllm_backend.pick_backend("auto") == "vllm"


def test_cpu_head_size_is_checked_before_the_engine_starts(tmp_path, monkeypatch):
    model, processor = build_tiny_policy(head_dim=16)
    save_policy(model, processor, tmp_path)
    attn = types.ModuleType("vllm.v1.attention.backends.cpu_attn")
    attn.CPUAttentionBackend = type("B", (), {"get_supported_head_sizes": staticmethod(lambda: [32, 64])})
    monkeypatch.setitem(sys.modules, "vllm.v1.attention.backends.cpu_attn", attn)
    with pytest.raises(ValueError, match="config.json: text_config head_dim=16.*\\[32, 64\\].*--backend hf"):
        vllm_backend.check_cpu_head_dim(str(tmp_path))


class StandInLLM:
    """Serves vLLM requests with HF generate, taking them as vLLM would: prompt text, one image each."""

    created: list = []

    def __init__(self, model, **kwargs):
        self.kwargs = kwargs
        self.model, self.processor = load_policy(model)
        self.stopped = False
        self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace(shutdown=self._stop))
        StandInLLM.created.append(self)

    def _stop(self):
        self.stopped = True

    def generate(self, requests, params, use_tqdm=True):
        outputs = []
        for req in requests:
            assert req["prompt"].count("<|image_pad|>") == 1, "vLLM expands the placeholder itself"
            inputs = self.processor(text=[req["prompt"]], images=[req["multi_modal_data"]["image"]], return_tensors="pt")
            suppress = [t for t, b in (params["logit_bias"] or {}).items() if b <= -100]
            with torch.no_grad():
                ids = self.model.generate(**inputs, max_new_tokens=params["max_tokens"], do_sample=False,
                                          suppress_tokens=suppress)
            token_ids = ids[0, inputs["input_ids"].shape[1] :].tolist()
            outputs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=token_ids)]))
        return outputs


@pytest.fixture
def stand_in_vllm(monkeypatch):
    fake = types.ModuleType("vllm")
    fake.LLM = StandInLLM
    fake.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: True)
    monkeypatch.setattr(vllm_backend, "check_cpu_head_dim", lambda path: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    StandInLLM.created = []
    return StandInLLM


def test_chunks_keep_row_order_and_the_engine_is_stopped(tmp_path, stand_in_vllm):
    model, processor = _sharp_policy()
    path = save_policy(model, processor, tmp_path / "policy")
    rows = _rows(n=5)
    expected = generate(model, processor, rows, max_new_tokens=6, batch_size=5)
    assert len(set(expected)) > 1  # the sharp policy really answers differently per row
    texts = vllm_backend.generate(str(path), processor, rows, max_new_tokens=6, chunk=2)
    assert texts == expected
    (llm,) = stand_in_vllm.created
    assert llm.stopped and llm.kwargs["kv_cache_memory_bytes"] == 1 << 30


def test_eval_cli_vllm_backend_end_to_end(tmp_path, capsys, stand_in_vllm):
    model, processor = _sharp_policy()
    policy = save_policy(model, processor, tmp_path / "policy")
    common = ["--policy", str(policy), "--env", "shapes_gres", "-o", "eval_size=4", "--tokenizer", "random",
              "--max-new-tokens", "8", "--grid", "2"]
    assert main([*common, "--out", str(tmp_path / "hf"), "--backend", "hf"]) == 0
    assert main([*common, "--out", str(tmp_path / "vllm"), "--backend", "vllm", "--max-model-len", "1024"]) == 0
    assert "vllm backend" in capsys.readouterr().out
    hf, vl = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("hf", "vllm"))
    assert vl["backend"] == "vllm" and hf["backend"] == "hf" and vl["metrics"] == hf["metrics"]
    read = lambda d: [json.loads(x)["completion"] for x in (tmp_path / d / "predictions.jsonl").read_text().splitlines()]
    assert read("vllm") == read("hf") and len(read("hf")) == 4
    assert stand_in_vllm.created[0].kwargs["max_model_len"] == 1024


def test_eval_cli_tiny_policy_is_saved_for_vllm(tmp_path, stand_in_vllm):
    args = ["--policy", "tiny", "--env", "shapes_gcg", "-o", "eval_size=2", "--tokenizer", "random", "--no-captions",
            "--out", str(tmp_path), "--max-new-tokens", "4", "--grid", "0", "--backend", "vllm"]
    with pytest.warns(UserWarning):  # GCG recall without a local BERT
        assert main(args) == 0
    assert (tmp_path / "policy-tiny" / "config.json").is_file()
    assert len(list((tmp_path / "predictions").glob("*.json"))) == 2


def test_eval_cli_without_vllm_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: False)
    assert main(["--policy", "tiny", "--env", "shapes_gres", "--out", str(tmp_path), "--backend", "vllm"]) == 2
    assert "vLLM is not installed" in capsys.readouterr().err


# ---- a real engine: `make test-vllm` --------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_real_vllm_gives_the_hf_completions_token_for_token(tmp_path, arch):
    pytest.importorskip("vllm")
    model, processor = _sharp_policy(arch)
    path = save_policy(model, processor, tmp_path / "policy")
    rows = _rows("shapes_gres", 6) + _rows("shapes_gcg", 2)
    expected = generate(model, processor, rows, max_new_tokens=24, batch_size=8)
    assert len(set(expected)) > 1
    assert vllm_backend.generate(str(path), processor, rows, max_new_tokens=24, dtype="float32") == expected


@pytest.mark.vllm
def test_real_vllm_eval_cli_on_the_tiny_policy(tmp_path):
    pytest.importorskip("vllm")
    args = ["--policy", "tiny", "--env", "shapes_gres", "-o", "eval_size=3", "--tokenizer", "random", "--grid", "2",
            "--out", str(tmp_path), "--max-new-tokens", "8", "--backend", "vllm", "--dtype", "float32"]
    assert main(args) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["backend"] == "vllm" and result["samples"] == 3 and "gIoU" in result["metrics"]
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 3


@pytest.mark.vllm
def test_real_vllm_expands_trl_s_image_ids_again_unless_collapsed(tmp_path):
    """What TRL's colocated rollouts send (processor-expanded ids + the image) corrupts the prompt on a real
    engine; with one placeholder per image (``one_placeholder_per_image``, used by our trainer) the
    completions are HF generate's."""
    pytest.importorskip("vllm")
    from vllm import LLM, SamplingParams

    from rewards.runtime import decode_raw

    model, processor = _sharp_policy()
    path = save_policy(model, processor, tmp_path / "policy")
    rows = _rows("shapes_gres", 6)
    expected = generate(model, processor, rows, max_new_tokens=16, batch_size=6)
    reqs = vllm_backend.requests(processor, rows)
    expanded = [processor(text=[r["prompt"]], images=[r["multi_modal_data"]["image"]])["input_ids"][0] for r in reqs]
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert all(list(ids).count(pad) > 1 for ids in expanded)
    llm = LLM(**vllm_backend.engine_kwargs(str(path), on_gpu=False, dtype="float32"))
    params = SamplingParams(**vllm_backend.sampling_kwargs(processor.tokenizer, 16))

    def served(prompt_ids):
        outs = llm.generate([{"prompt_token_ids": list(ids), "multi_modal_data": r["multi_modal_data"]}
                             for ids, r in zip(prompt_ids, reqs)], params, use_tqdm=False)
        return decode_raw([list(o.outputs[0].token_ids) for o in outs], processor.tokenizer)

    try:
        assert served([vllm_rollout.collapse_image_runs(list(ids), pad) for ids in expanded]) == expected
        # The reason for the wrapper; should a vLLM upgrade stop expanding twice, this line tells.
        assert served(expanded) != expected
    finally:
        vllm_backend._stop_engine(llm)


def test_a_lora_checkpoint_is_merged_before_vllm_loads_it(tmp_path):
    from peft import LoraConfig, get_peft_model

    from rl.eval.evaluate import vllm_policy_spec

    model, processor = build_tiny_policy(head_dim=32)
    base = save_policy(model, processor, tmp_path / "base")
    base_model, _ = load_policy(base)
    peft = get_peft_model(base_model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "checkpoint-7")
    path, proc = vllm_policy_spec(str(tmp_path / "checkpoint-7"), tmp_path / "out")
    assert path == str(tmp_path / "out" / "policy-merged") and (tmp_path / "out" / "policy-merged" / "config.json").is_file()
    merged, _ = load_policy(path)
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(dict(merged.named_parameters())[q], dict(model.named_parameters())[q])
    assert vllm_policy_spec(str(base), tmp_path / "out")[0] == str(base)  # a whole checkpoint goes as it is
