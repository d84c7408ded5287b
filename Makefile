# Two commands set up a fresh machine and run everything:
#   make test    install (torch 2.14.1 + torchvision 0.29.1 only if no torch is importable; never a
#                second torch), build (CPU kernels per ISA, CUDA kernels when torch has CUDA and a
#                CUDA toolkit is found), run the test suite
#   make bench   install, build, run the benchmark suite (results in benchmarks/results/)
#   make sanitize  the extension built with AddressSanitizer + UndefinedBehaviorSanitizer into
#                build/sanitize (the tree's own build is left alone), the op tests run against it
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: setup build test bench lint sanitize

setup:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q numpy pytest hypothesis tqdm matplotlib pillow pycocotools ruff onnx onnxscript onnxruntime

build: setup
	$(PIP) install --no-build-isolation --no-deps -e .

test: build
	$(PYTHON) -m pytest -q -x tests

bench: build
	$(PYTHON) -m benchmarks

# The op tests (every kernel, hostile input included) on this CPU's kernels, and the agreement
# test, which runs every kernel of the other CPU builds in subprocesses. The extension is not
# linked into python, so ASan's runtime is preloaded (it must come first), with libstdc++ ahead
# of torch's loading order. UBSan stops at the first finding; leak reports are off (CPython and
# torch keep allocations until exit).
SANITIZE_LIB = build/sanitize/lib
SANITIZE_TESTS = test_focal_loss.py test_boxes.py test_assign.py test_nms.py test_postprocess.py test_hostile.py \
	test_cpu_capabilities.py::test_capabilities_agree
sanitize: setup
	FOCALOPS_SANITIZE=1 $(PYTHON) setup.py -q build_py --build-lib $(SANITIZE_LIB) \
		build_ext --build-lib $(SANITIZE_LIB) --build-temp build/sanitize/temp
	cd $(SANITIZE_LIB) && PYTHONPATH=$(CURDIR)/$(SANITIZE_LIB) \
		LD_PRELOAD="$$(c++ -print-file-name=libasan.so) $$(c++ -print-file-name=libstdc++.so.6)" \
		ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
		$(PYTHON) -m pytest -q -x -p no:cacheprovider -k "not inductor" $(addprefix $(CURDIR)/tests/,$(SANITIZE_TESTS))

lint:
	ruff check focalops tests benchmarks setup.py
