# graphsr: `make demo` runs the main job end to end, `make test` the tests. Both install what they need first.
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
TORCH_VERSION   := 2.13.0
SCATTER_VERSION := 2.1.2
CLUSTER_VERSION := 1.6.3
# torch-scatter / torch-cluster compiled against this torch, kept outside the clone so fresh clones reuse them
WHEEL_CACHE ?= $(HOME)/.cache/graphsr/wheels/torch-$(TORCH_VERSION)
STAMP       := $(VENV)/.installed
GRAPHSR     := $(VENV)/bin/graphsr

DATA        ?= data
EVENTS      ?= 4000
SEED        ?= 1

.PHONY: install demo demo-multi demo-pyramid train sample eval test test-slow data bench clean
CONFIG      ?= configs/single_electron_2x.yaml
REGRESSION_CONFIG ?= configs/single_electron_2x_regression.yaml
RUN         ?= runs/single_electron_2x
# the 4-step student of RUN's 32-step sampler (graphsr distill): what the demo evaluates, and what `make sample` /
# `make eval` use once it exists; 4 plain DDIM steps bias the event energy by about -0.1% (docs/distillation.md)
STUDENT     ?= $(RUN)_4step
MODEL       ?= $(if $(wildcard $(STUDENT)/checkpoint.pt),$(STUDENT),$(RUN))
INPUT       ?= $(DATA)/single_electron_2x.root
REPORT      ?= reports/single_electron_2x

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	# torch first and pinned: the CPU wheel on disk, never the multi-GB CUDA download
	$(PIP) install -q torch==$(TORCH_VERSION)
	mkdir -p $(WHEEL_CACHE)
	# compile both extensions at once (~10-25 min on 2 cores); skipped when the wheels are cached
	ls $(WHEEL_CACHE)/torch_scatter-$(SCATTER_VERSION)-*.whl >/dev/null 2>&1 || \
	  MAX_JOBS=1 $(PIP) wheel -q --no-deps --no-build-isolation -w $(WHEEL_CACHE) torch-scatter==$(SCATTER_VERSION) & \
	ls $(WHEEL_CACHE)/torch_cluster-$(CLUSTER_VERSION)-*.whl >/dev/null 2>&1 || \
	  MAX_JOBS=1 $(PIP) wheel -q --no-deps --no-build-isolation -w $(WHEEL_CACHE) torch-cluster==$(CLUSTER_VERSION) & \
	wait
	$(PIP) install -q --no-deps $(WHEEL_CACHE)/torch_scatter-$(SCATTER_VERSION)-*.whl \
	  $(WHEEL_CACHE)/torch_cluster-$(CLUSTER_VERSION)-*.whl
	$(PIP) install -q -e '.[dev]'
	$(PY) -c "import torch_scatter, torch_cluster, torch_geometric, uproot, awkward"
	touch $@

# ----------------------------------------------------------------------------------------------- data
$(DATA)/single_electron_2x.root: | $(STAMP)
	$(GRAPHSR) simulate --gun single-electron --factor 2 --events $(EVENTS) --seed $(SEED) --output $@

$(DATA)/multi_particle_4x.root: | $(STAMP)
	$(GRAPHSR) simulate --gun multi-particle --factor 4 --events $(EVENTS) --seed $(SEED) --output $@

# events for the particle-flow models: simulated apart from the SR model's (another seed), so that the SR output
# the reconstruction learns from is what the SR model gives on events it never saw (graphsr/reco/training.py)
RECO_EVENTS ?= 1000
$(DATA)/multi_particle_4x_reco.root: | $(STAMP)
	$(GRAPHSR) simulate --gun multi-particle --factor 4 --events $(RECO_EVENTS) --seed $$(( $(SEED) + 1000 )) --output $@

# make demo-multi's SR training events (another seed again): its evaluation file, multi_particle_4x.root, is then
# unseen by every model, all of its events held out
MULTI_TRAIN_EVENTS ?= 12000
$(DATA)/multi_particle_4x_12k.root: | $(STAMP)
	$(GRAPHSR) simulate --gun multi-particle --factor 4 --events $(MULTI_TRAIN_EVENTS) --seed $$(( $(SEED) + 2 )) --output $@

data: $(DATA)/single_electron_2x.root $(DATA)/multi_particle_4x.root

# ----------------------------------------------------------------------------------------------- main job
# the demo targets own their runs and replace them (--overwrite), so that they can be run again
# simulate -> summarise -> train (10 min on CPU at most) -> distil to 4 steps (3 min) + regression baseline (3 min)
# -> super-resolve and evaluate held-out events
demo: $(STAMP) $(DATA)/single_electron_2x.root
	$(GRAPHSR) summary --input $(DATA)/single_electron_2x.root --plot $(REPORT)/data/event_display.png
	$(GRAPHSR) train --config $(CONFIG) --out $(RUN) --overwrite
	$(GRAPHSR) distill --checkpoint $(RUN)/checkpoint.pt --out $(STUDENT) --teacher-steps 32 --rounds 3 --overwrite
	$(GRAPHSR) train --config $(REGRESSION_CONFIG) --out $(RUN)_regression --overwrite
	$(GRAPHSR) evaluate --checkpoint $(STUDENT)/checkpoint.pt --input $(INPUT) --out $(REPORT) --events 300 \
	  --regression $(RUN)_regression/checkpoint.pt
	@echo "demo done: report in $(REPORT)/report.md"

# the multi-particle 4x setup on CPU (an electron plus 0-3 photons; about 40 min on 2 cores): simulate, train flow
# matching compiled on 12,000 events (~25 min: configs/multi_particle_4x_30min_cfm.yaml, docs/diffusion.md) and the
# regression baseline on the same events (3 min), the particle-flow models (1,200 steps each: ~1.5, 4 and 4 min),
# then evaluate on 300 events of multi_particle_4x.root, a file no model saw, with the downstream particle
# reconstruction (hand-written and learned): reports/multi_particle_4x/report.md
MULTI_TRAIN := $(DATA)/multi_particle_4x_12k.root
demo-multi: $(STAMP) $(DATA)/multi_particle_4x.root $(DATA)/multi_particle_4x_reco.root $(MULTI_TRAIN)
	$(GRAPHSR) train --config configs/multi_particle_4x_30min_cfm.yaml --data $(MULTI_TRAIN) --out runs/multi_particle_4x \
	  --overwrite
	$(GRAPHSR) train --config configs/multi_particle_4x_regression.yaml --data $(MULTI_TRAIN) \
	  --out runs/multi_particle_4x_regression --overwrite
	# particle-flow models (1,200 steps each) on the reco events: coarse cells, fine truth, and their SR output (an
	# ensemble of 10, as evaluate's)
	$(GRAPHSR) sample --checkpoint runs/multi_particle_4x/checkpoint.pt --input $(DATA)/multi_particle_4x_reco.root \
	  --output runs/multi_particle_4x/reco_sr.root --overwrite
	for type in coarse truth sr; do $(GRAPHSR) train-reco --config configs/reco/multi_particle_4x.yaml \
	  --input-type $$type --out runs/multi_particle_4x_reco_$$type --overwrite --data $(DATA)/multi_particle_4x_reco.root \
	  --sr-files runs/multi_particle_4x/reco_sr.root --sr-checkpoint runs/multi_particle_4x/checkpoint.pt || exit 1; done
	$(GRAPHSR) evaluate --checkpoint runs/multi_particle_4x/checkpoint.pt --input $(DATA)/multi_particle_4x.root \
	  --split all --out reports/multi_particle_4x --events 300 --regression runs/multi_particle_4x_regression/checkpoint.pt \
	  --reco runs/multi_particle_4x_reco_coarse/checkpoint.pt runs/multi_particle_4x_reco_truth/checkpoint.pt \
	  runs/multi_particle_4x_reco_sr/checkpoint.pt
	@echo "multi-particle demo done: report in reports/multi_particle_4x/report.md"

# the pyramid generator beside the dense one of `make demo` (its checkpoint first): train it (10 min on CPU), evaluate
# both on the same held-out events ($(REPORT)_pyramid/report.md), then cost against occupancy (bench_pyramid.py)
demo-pyramid: $(STAMP) $(DATA)/single_electron_2x.root
	$(GRAPHSR) train --config configs/single_electron_2x_pyramid.yaml --out $(RUN)_pyramid --overwrite
	$(GRAPHSR) evaluate --checkpoint $(RUN)/checkpoint.pt --compare $(RUN)_pyramid/checkpoint.pt --input $(INPUT) \
	  --out $(REPORT)_pyramid --events 300
	$(PY) bench/bench_pyramid.py --checkpoint dense=$(RUN)/checkpoint.pt --checkpoint pyramid=$(RUN)_pyramid/checkpoint.pt

# train (continue with RESUME=1, replace a run in RUN with OVERWRITE=1) the model of CONFIG (its data.train files) into RUN; INPUT is made first
train: $(STAMP) $(INPUT)
	$(GRAPHSR) train --config $(CONFIG) --out $(RUN) $(if $(RESUME),--resume) $(if $(OVERWRITE),--overwrite)

# super-resolve INPUT with the trained model (MODEL: its 4-step student when distilled) into $(MODEL)/super_resolved.root
sample: $(STAMP)
	$(GRAPHSR) sample --checkpoint $(MODEL)/checkpoint.pt --input $(INPUT) --output $(MODEL)/super_resolved.root --overwrite

# full evaluation report on every held-out event
eval: $(STAMP)
	$(GRAPHSR) evaluate --checkpoint $(MODEL)/checkpoint.pt --input $(INPUT) --out $(REPORT) \
	  $(if $(wildcard $(RUN)_regression/checkpoint.pt),--regression $(RUN)_regression/checkpoint.pt)

# ----------------------------------------------------------------------------------------------- checks
test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) bench/bench_simulator.py
	$(PY) bench/bench_loading.py
	$(PY) bench/bench_denoiser.py
	$(PY) bench/bench_training.py
	$(PY) bench/bench_speed.py
	$(PY) bench/bench_sampling.py --checkpoint $(MODEL)/checkpoint.pt --input $(INPUT)
	$(PY) bench/bench_evaluation.py --checkpoint $(RUN)/checkpoint.pt

clean:
	rm -rf $(VENV) reports runs $(DATA)/*.root
