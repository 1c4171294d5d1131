# Self-documenting Makefile (Cookiecutter Data Science style): `make` or `make help` lists the targets.
# Everything runs in the virtual environment $(VENV), created from the lock files on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATASET ?= data/cifar_dataset
SAMPLE_DATASET ?= data/sample_dataset
SAMPLE_IMAGES ?= data/sample_images
EXPERIMENTS ?= experiments
EXPERIMENT ?= local_exp
LITSERVE_VENV ?= .venv-litserve
RUN_STAMP := $(shell date +%Y%m%d-%H%M%S)
RUN ?= run-$(RUN_STAMP)
TRAIN_ARGS ?=
# The database is mocked: any password does for local runs. Export DB_PASSWORD to use your own.
DB_PASSWORD ?= local-mock-password
export DB_PASSWORD

.DEFAULT_GOAL := help
.PHONY: help requirements lock lint format test test-fast docs data images train demo demo-folder example reproduce bench litserve-venv bench-folders build docker-build docker-test clean

# The variables a `## ` line may name as $(NAME): `make help` shows their values instead.
HELP_VARIABLES := PYTHON VENV DATASET SAMPLE_DATASET SAMPLE_IMAGES EXPERIMENTS EXPERIMENT

## Show this help
help:
	@$(foreach name,$(HELP_VARIABLES),$(name)='$(subst ','\'',$($(name)))') awk '\
		/^## / { doc = substr($$0, 4); \
			while (match(doc, /\$$\([A-Za-z_]+\)/) && (substr(doc, RSTART + 2, RLENGTH - 3) in ENVIRON)) \
				doc = substr(doc, 1, RSTART - 1) ENVIRON[substr(doc, RSTART + 2, RLENGTH - 3)] substr(doc, RSTART + RLENGTH); \
			next } \
		/^[a-zA-Z_-]+:/ && doc { split($$0, target, ":"); printf "  %-14s %s\n", target[1], doc } { doc = "" }' $(MAKEFILE_LIST)

# The lock files install on one platform only: say so at once rather than after minutes of pip.
$(BIN)/python:
	@bash requirements/check_platform.sh "$(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.prod-installed: $(BIN)/python requirements/requirements-prod.txt requirements/requirements-build.txt pyproject.toml
	PYTHON=$(BIN)/python bash requirements/requirements-prod.sh
	# setuptools-scm (build lock) computes the package's version from git for the editable install.
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/requirements-build.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.prod-installed requirements/requirements-cq.txt requirements/requirements-build.txt requirements/requirements-dev.txt
	PYTHON=$(BIN)/python bash requirements/requirements-dev.sh
	touch $@

## Create the venv (.venv) with the dev, code-quality and build requirements and the package (editable)
requirements: $(VENV)/.dev-installed

## Recompile the requirements/*.txt lock files from the *.in files (after changing a dependency)
lock: $(VENV)/.dev-installed
	cd requirements && for set in build cq prod dev; do \
		../$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
			--no-emit-index-url --no-emit-find-links --output-file=requirements-$$set.txt requirements-$$set.in || exit 1; \
	done

## Run every pre-commit hook (flake8, black, isort, file checks) on all files
lint: $(VENV)/.dev-installed
	$(BIN)/pre-commit run --all-files

## Format the code with black and isort
format: $(VENV)/.dev-installed
	$(BIN)/isort image_classifier tests benchmarks
	$(BIN)/black image_classifier tests benchmarks

## Run the whole test suite: pre-commit on all files, then pytest (slow end-to-end tests included)
test: lint $(LITSERVE_VENV)/.installed
	$(BIN)/python -m pytest

## Run only the fast tests (skips the end-to-end ones marked slow)
test-fast: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -m "not slow"

## Build the documentation site (docs/, mkdocs.yml) into site/, strictly: a broken link or anchor, or a page missing from the nav, fails
docs: $(VENV)/.dev-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

## Generate the sample dataset (CIFAR-10 file format) into $(SAMPLE_DATASET) if it is missing
data: $(SAMPLE_DATASET)/metadata.json

$(SAMPLE_DATASET)/metadata.json: | $(VENV)/.prod-installed
	$(BIN)/python -m image_classifier.data.synthetic --output $(SAMPLE_DATASET) --train_size 5000 --test_size 1000 --seed 0

## Generate a sample image folder (PNG and JPEG of mixed sizes and modes) into $(SAMPLE_IMAGES) if it is missing
images: $(SAMPLE_IMAGES)/train

$(SAMPLE_IMAGES)/train: | $(VENV)/.prod-installed
	$(BIN)/python -m image_classifier.data.synthetic --image_folder --output $(SAMPLE_IMAGES) --train_size 1000 \
		--test_size 200 --min_side 20 --max_side 72 --seed 0

## Train on $(DATASET) (default: the real CIFAR-10); set EXPERIMENT, RUN and TRAIN_ARGS to change the run
train: $(VENV)/.prod-installed
	$(BIN)/image_classifier_trainer --experiment_name $(EXPERIMENT) --run_name $(RUN) \
		--experiments_folder $(EXPERIMENTS) --dataset_folder $(DATASET) $(TRAIN_ARGS)

## Quick start: set up, generate the sample dataset, train a short run on it, print where the outputs are
demo: data
	$(MAKE) --no-print-directory train DATASET=$(SAMPLE_DATASET) EXPERIMENT=demo RUN=$(RUN)
	@echo "Outputs: $(EXPERIMENTS)/demo/$(RUN)/ (model.pth, metrics.json, run.json, metrics.png, curves.png, confusion_matrix.png)"

## Your own images, end to end on a generated image folder: train, register, predict, serve (scripts/demo_folder.sh)
demo-folder: images
	bash scripts/demo_folder.sh $(BIN) $(SAMPLE_IMAGES) $(EXPERIMENTS) $(RUN)

## Regenerate the committed example run experiments/local_exp_test/run_1 from the sample dataset
example: data
	rm -rf $(EXPERIMENTS)/local_exp_test/run_1
	$(BIN)/image_classifier_trainer --experiment_name local_exp_test --run_name run_1 \
		--experiments_folder $(EXPERIMENTS) --dataset_folder $(SAMPLE_DATASET)

## Re-run a recorded run and check that it gives the same bytes (RUN_DIR=experiments/local_exp_test/run_1)
reproduce: data
	$(BIN)/image_classifier_reproduce $(or $(RUN_DIR),experiments/local_exp_test/run_1)

## Measure training against the notebook's pipeline, then serving against LitServe (docs/performance.md)
bench: $(VENV)/.dev-installed $(LITSERVE_VENV)/.installed
	$(BIN)/python benchmarks/bench_training.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/serve_load.py --litserve_python $(LITSERVE_VENV)/bin/python $(SERVE_BENCH_ARGS)

## The serving benchmark's peer, LitServe, in a venv of its own on top of the dev venv's packages (never in prod)
litserve-venv: $(LITSERVE_VENV)/.installed

# The base interpreter of the dev venv, and a .pth line that adds the dev venv's packages after LitServe's own.
$(LITSERVE_VENV)/.installed: $(VENV)/.dev-installed requirements/requirements-litserve.txt
	rm -rf "$(LITSERVE_VENV)"
	"$$($(BIN)/python -c 'import sys; print(sys._base_executable)')" -m venv $(LITSERVE_VENV)
	$(BIN)/python -c "import site, sysconfig; print('import site; site.addsitedir(%r)' % sysconfig.get_paths()['purelib'])" \
		> "$$($(LITSERVE_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_dev_venv.pth"
	$(LITSERVE_VENV)/bin/python -m pip uninstall --quiet --yes setuptools  # the dev venv's pinned one is used
	$(LITSERVE_VENV)/bin/python -m pip install --quiet --no-deps --require-hashes -r requirements/requirements-litserve.txt
	$(LITSERVE_VENV)/bin/python -m pip check
	touch $@

## Measure preparing and training on a generated folder of 20,000 images against torchvision's way (docs/performance.md)
bench-folders: $(VENV)/.dev-installed
	$(BIN)/python benchmarks/bench_folders.py $(BENCH_ARGS)

## Build the wheel and the sdist into dist/
build: $(VENV)/.dev-installed
	$(BIN)/python -m build --no-isolation --outdir dist .

## Build the Docker image (docker/build.sh); the venv's python builds the wheel
docker-build: $(VENV)/.prod-installed
	PYTHON=$(abspath $(BIN)/python) bash docker/build.sh

## Build the image, train in a container as the workflow does, check the outputs (docker/test_image.sh)
docker-test: $(VENV)/.prod-installed
	PYTHON=$(abspath $(BIN)/python) bash docker/test_image.sh

## Remove build outputs, caches and generated data (keeps $(VENV) and the experiments)
clean:
	rm -rf build dist site *.egg-info .pytest_cache $(SAMPLE_DATASET) $(SAMPLE_IMAGES) docker/*.whl docker/requirements-prod.* docker/_install.sh
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
