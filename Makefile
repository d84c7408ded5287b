# Two commands set up a fresh machine and run everything:
#   make test    install (torch 2.14.1 + torchvision 0.29.1 only if no torch is importable; never a
#                second torch), build (CPU kernels per ISA, CUDA kernels when torch has CUDA and a
#                CUDA toolkit is found), run the test suite
#   make bench   install, build, run the benchmark suite (results in benchmarks/results/)
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: setup build test bench lint

setup:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q numpy pytest hypothesis tqdm matplotlib pillow pycocotools ruff

build: setup
	$(PIP) install --no-build-isolation --no-deps -e .

test: build
	$(PYTHON) -m pytest -q -x tests

bench: build
	$(PYTHON) -m benchmarks

lint:
	ruff check focalops tests benchmarks setup.py
