# Two entry points on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow docs install install-test install-docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip wheel

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -c constraints.txt -e '.[test]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-docs: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -c constraints.txt -e '.[docs]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-docs: $(VENV)/.installed-docs

demo: install
	$(BIN)/idls demo --out runs/demo

test: install-test
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-slow: install-test
	$(BIN)/python -m pytest -n 2 --dist loadfile -m slow

# The site of mkdocs.yml into site/, warnings as errors (broken links and anchors, docstring problems).
docs: install-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict -d site

bench: install
	$(BIN)/python benchmarks/interpreters.py
	$(BIN)/python benchmarks/pgd_cost.py
	$(BIN)/python benchmarks/joint_cost.py

clean:
	rm -rf $(VENV) runs build site *.egg-info
