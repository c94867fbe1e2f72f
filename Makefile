# Every command installs what it needs into .venv first (idempotent: redone only when the
# package metadata changes), so each works on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdiqa-installed

.PHONY: quickstart test test-pyiqa lint install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch and torchvision pinned together: the only pair that installs and imports on these machines
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/kdiqa run quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The pyiqa teacher against real pyiqa (tests/test_external_teachers.py; skipped in `make test`), in a
# venv of its own: pyiqa (PolyForm Noncommercial) pulls transformers >= 5, bitsandbytes, datasets, ...
PYIQA_VENV := .venv-pyiqa
test-pyiqa:
	test -x $(PYIQA_VENV)/bin/python || $(PY) -m venv $(PYIQA_VENV)
	$(PYIQA_VENV)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PYIQA_VENV)/bin/python -m pip install --quiet -e '.[dev,pyiqa]'
	$(PYIQA_VENV)/bin/python -m pytest -q tests/test_external_teachers.py

lint: $(STAMP)
	$(BIN)/ruff check kdiqa tests benchmarks

clean:
	rm -rf $(VENV) $(PYIQA_VENV) runs data/mini .pytest_cache
