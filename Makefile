# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp depends on the files that define the environment, so editing a pin reinstalls.
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

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

demo: $(STAMP)
	OMP_NUM_THREADS=2 $(VENV)/bin/samtok-rl demo

bench: $(STAMP)
	$(PY) bench/tokenizer.py && $(PY) bench/rewards.py && $(PY) bench/environments.py && $(PY) bench/trainer.py

clean:
	rm -rf $(VENV) runs .pytest_cache
