# One-command entry points. Each creates the environment first if it is missing (idempotent:
# a second run reinstalls nothing). VENV=/path/to/venv uses another environment.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export VENV
# See tools/train_net.py: spinning OpenMP threads starve other processes on small machines.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: env lint test test-d2main demo benchmark benchmark-model clean-env

env:
	@bash tools/env/setup_env.sh

# Lint and format check of the whole tree (ruff.toml: line length 100, import order).
lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Test files run in parallel worker processes (pytest-xdist), one per core up to 4, each file's
# tests in one worker so that a file's trained-model fixtures are built once. PYTEST_WORKERS=0
# runs everything in this process.
PYTEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ "$$n" -gt 4 ] && n=4; echo $$n)
PYTEST_FLAGS := -q --durations=20 -n $(PYTEST_WORKERS) --dist loadfile

test: env lint
	$(PY) -m pytest $(PYTEST_FLAGS) tests

# The tests that touch detectron2's engine, checkpointer, data loading, configs and export, run
# against detectron2's main branch: a pure-Python snapshot put first on the path (it shadows the
# installed 0.6; nothing is built). D2MAIN=/path/to/detectron2-main-checkout uses another one.
D2MAIN ?= $(CURDIR)/../shared/third_party/detectron2-main
D2MAIN_TESTS := tests/engine tests/tools tests/data tests/export tests/routing_analysis \
	tests/test_checkpoint.py tests/test_configs.py tests/test_lazy_configs.py \
	tests/modeling/test_detectors.py
# The layer benchmark never imports detectron2: it runs once, in `make test`.
D2MAIN_SKIP := --ignore=tests/tools/test_benchmark_layer.py
test-d2main: env
	@test -f "$(D2MAIN)/detectron2/__init__.py" || { echo "no detectron2 main at $(D2MAIN): set D2MAIN to a checkout of its main branch"; exit 2; }
	PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$(D2MAIN)" $(PY) -c "import detectron2, os; print('detectron2 from', os.path.dirname(detectron2.__file__))"
	PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$(D2MAIN)" $(PY) -m pytest $(PYTEST_FLAGS) -p no:cacheprovider $(D2MAIN_SKIP) $(D2MAIN_TESTS)

# The main job (configs/shapes/): SSD-MobileNetV1 0.5x trained as a static model on the bundled
# shapes dataset (800 images, generated on first use), then continued as its static twin and
# upcycled into CondConv for 1.5 times as many iterations (on the CPU the twins side by side, one
# thread each); both COCO AP tables with params / multiply-adds. DEMO_FLAGS="--seeds 3" for the
# mean and spread; DEMO_FLAGS="--from-static 0" trains both twins from scratch instead.
DEMO_FLAGS ?=
demo: env
	$(PY) tools/compare_twins.py $(DEMO_FLAGS)

benchmark: env
	$(PY) tools/benchmark_layer.py --markdown

benchmark-model: env
	$(PY) tools/benchmark_model.py --markdown

clean-env:
	rm -rf $(VENV) build/env
