# One-command entry points. Each creates the environment first if it is missing (idempotent:
# a second run reinstalls nothing). VENV=/path/to/venv uses another environment.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export VENV
# See tools/train_net.py: spinning OpenMP threads starve other processes on small machines.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: env test demo benchmark benchmark-model clean-env

env:
	@bash tools/env/setup_env.sh

test: env
	$(PY) -m pytest -q tests

# The main job: SSD with CondConv-MobileNetV1 and its static twin trained on the bundled shapes
# dataset (generated on first use), then both COCO AP tables with params / multiply-adds.
demo: env
	$(PY) tools/compare_twins.py

benchmark: env
	$(PY) tools/benchmark_layer.py --markdown

benchmark-model: env
	$(PY) tools/benchmark_model.py --markdown

clean-env:
	rm -rf $(VENV) build/env
