# Two commands set up a fresh machine and run everything:
#   make test    install (torch 2.14.1 + torchvision 0.29.1 only if no torch is importable; never a
#                second torch), build (CPU kernels per ISA, CUDA kernels when torch has CUDA and a
#                CUDA toolkit is found, and the CUDA kernels on the SIMT emulator, focalops._C_emu),
#                run the test suite (without a GPU its CUDA cases run on the emulated device)
#   make bench   install, build, run the benchmark suite (results in benchmarks/results/)
#   make sanitize  the extension and the emulated CUDA kernels built with AddressSanitizer +
#                UndefinedBehaviorSanitizer into build/sanitize (the tree's own build is left
#                alone), the op tests run against them (CPU and emulated CUDA cases)
#   make other-torch  another torch (OTHER_TORCH, default torch==2.13.0) in build/other-torch: then
#                tests/test_install.py imports this build under it and checks the one-line mismatch
#                message (without it that test skips)
#   make tsan    the emulated CUDA kernels built with ThreadSanitizer into build/tsan (each CUDA
#                thread a fiber), the CUDA cases of the kernels with shared memory or atomics
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# The interpreter itself (a sanitizer runtime preloaded into a launcher script would not reach it).
PYEXE = $(shell $(PYTHON) -c "import sys; print(sys.executable)")

OTHER_TORCH ?= torch==2.13.0

.PHONY: setup build test bench lint sanitize tsan other-torch

setup:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q numpy pytest hypothesis tqdm matplotlib pillow pycocotools ruff onnx onnxscript onnxruntime

build: setup
	FOCALOPS_CUDA_EMULATE=1 $(PIP) install --no-build-isolation --no-deps -e .

test: build
	$(PYTHON) -m pytest -q -x tests

bench: build
	$(PYTHON) -m benchmarks

other-torch:
	$(PYTHON) -m venv build/other-torch
	build/other-torch/bin/pip install -q "$(OTHER_TORCH)" numpy

# The op tests (every kernel, hostile input included) on this CPU's kernels, and the agreement
# test, which runs every kernel of the other CPU builds in subprocesses. The extension is not
# linked into python, so ASan's runtime is preloaded (it must come first), with libstdc++ ahead
# of torch's loading order. UBSan stops at the first finding; leak reports are off (CPython and
# torch keep allocations until exit). --capture=sys: a sanitizer writes its report to file
# descriptor 2 and ends the process, so pytest must not capture that descriptor.
SANITIZE_LIB = build/sanitize/lib
SANITIZE_TESTS = $(shell grep -v '^\#' tests/op_tests.txt) test_cpu_capabilities.py::test_capabilities_agree
sanitize: setup
	FOCALOPS_SANITIZE=1 FOCALOPS_CUDA_EMULATE=1 $(PYTHON) setup.py -q build_py --build-lib $(SANITIZE_LIB) \
		build_ext --build-lib $(SANITIZE_LIB) --build-temp build/sanitize/temp
	cd $(SANITIZE_LIB) && PYTHONPATH=$(CURDIR)/$(SANITIZE_LIB) \
		LD_PRELOAD="$$(c++ -print-file-name=libasan.so) $$(c++ -print-file-name=libstdc++.so.6)" \
		ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
		$(PYEXE) -m pytest -q -x -p no:cacheprovider --capture=sys -k "not inductor" $(addprefix $(CURDIR)/tests/,$(SANITIZE_TESTS))

# ThreadSanitizer on the emulated kernels that share memory between threads or use atomics
# (block sums, assignment tiles, NMS masks and suppression, post-processing NMS). Only
# focalops._C_emu is instrumented (with fiber annotations: each CUDA thread is a TSan thread,
# synchronised at barriers, warp operations and launch boundaries); the CPU library and torch
# are not, so their interceptors are ignored.
TSAN_LIB = build/tsan/lib
TSAN_TESTS = test_focal_loss.py test_assign.py test_nms.py test_postprocess.py
# Their CUDA cases, less the largest sizes (TSan runs ~50x slower; the smaller cases reach the
# same tiles, block edges and chunks).
TSAN_SELECT = (cuda_emu or cuda_) and not inductor and not compile and not retinanet_size and not large_input \
	and not boundaries
tsan: setup
	@test -f focalops/_C.so || { echo "make tsan: build the tree first (make build)"; exit 2; }
	FOCALOPS_CUDA=0 FOCALOPS_EMULATE_TSAN=1 $(PYTHON) setup.py -q build_py --build-lib $(TSAN_LIB) \
		build_ext --build-lib $(TSAN_LIB) --build-temp build/tsan/temp
	cp focalops/_C.so $(TSAN_LIB)/focalops/
	cd $(TSAN_LIB) && PYTHONPATH=$(CURDIR)/$(TSAN_LIB) LD_PRELOAD="$$(c++ -print-file-name=libtsan.so)" \
		TSAN_OPTIONS="halt_on_error=1 ignore_noninstrumented_modules=1 report_signal_unsafe=0" \
		$(PYEXE) -m pytest -q -x -p no:cacheprovider --capture=sys -k "$(TSAN_SELECT)" \
		$(addprefix $(CURDIR)/tests/,$(TSAN_TESTS))

lint:
	ruff check focalops tests benchmarks setup.py
