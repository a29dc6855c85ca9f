# Two commands on a fresh machine: `make demo` (main job, offline) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of torch (a file on these machines' disk). GPU users: make setup TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup espeak demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# espeak-ng for synthetic speech: the Debian package when we can install it, else the PyPI espeakng-loader library.
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) || \
	  echo "espeak-ng not installed: using the espeakng-loader library from PyPI"; }

demo: setup espeak
	$(VENV)/bin/lora-whisper -v train --lang fr --domain medical
	$(PY) -m lora_whisper.demo

# Two workers (pytest-xdist), one test file per worker at a time: a module's Ray runtime or real base is built once.
test: setup espeak
	$(PY) -m pytest -q -n 2 --dist loadfile -m 'not slow' --durations=10

# Unit tests on tiny models, no real base, no extra processes.
test-fast: setup
	$(PY) -m pytest -q -n 2 -m 'not slow and not integration and not processes' --durations=10

lint: setup
	$(VENV)/bin/ruff check lora_whisper tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
