# graphsr: every target installs what it needs first (see `make install`).
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
# Built torch-scatter / torch-cluster wheels live outside the clone so a fresh clone reuses them.
WHEEL_CACHE ?= $(HOME)/.cache/graphsr/wheels/torch-$(TORCH_VERSION)
TORCH_VERSION   := 2.13.0
SCATTER_VERSION := 2.1.2
CLUSTER_VERSION := 1.6.3
STAMP       := $(VENV)/.graphsr-installed

.PHONY: install
install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	# torch first and pinned: the CPU wheel on disk, never the multi-GB CUDA download.
	$(PIP) install -q torch==$(TORCH_VERSION)
	mkdir -p $(WHEEL_CACHE)
	# Compile both extensions against this torch at once (each takes ~10 min on 2 cores); reuse cached wheels.
	ls $(WHEEL_CACHE)/torch_scatter-$(SCATTER_VERSION)-*.whl >/dev/null 2>&1 || \
	  MAX_JOBS=1 $(PIP) wheel -q --no-deps --no-build-isolation -w $(WHEEL_CACHE) torch-scatter==$(SCATTER_VERSION) & \
	ls $(WHEEL_CACHE)/torch_cluster-$(CLUSTER_VERSION)-*.whl >/dev/null 2>&1 || \
	  MAX_JOBS=1 $(PIP) wheel -q --no-deps --no-build-isolation -w $(WHEEL_CACHE) torch-cluster==$(CLUSTER_VERSION) & \
	wait
	$(PIP) install -q --no-deps $(WHEEL_CACHE)/torch_scatter-$(SCATTER_VERSION)-*.whl $(WHEEL_CACHE)/torch_cluster-$(CLUSTER_VERSION)-*.whl
	$(PIP) install -q -e '.[dev]'
	touch $@
