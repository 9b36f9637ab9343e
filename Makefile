# Two entry points on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow lint docs install install-test install-docs chromium pretrained bench clean

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

# Headless Chromium for tests/test_browser.py: Debian's package, installed where it is missing and root can
# install it; elsewhere those tests are skipped with the command that installs it.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; } || \
	  echo "chromium not installed (needs root and apt-get): the browser tests will be skipped"

demo: install
	$(BIN)/idls demo --out runs/demo

test: install-test chromium
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-slow: install-test chromium
	$(BIN)/python -m pytest -n 2 --dist loadfile -m slow

# pyflakes, bugbear and import order over the whole tree (the rule set: [tool.ruff] in pyproject.toml).
lint: install-test
	$(BIN)/ruff check .

# The site of mkdocs.yml into site/, warnings as errors (broken links and anchors, docstring problems).
docs: install-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict -d site

# Retrain the weights shipped in src/idls/pretrained from scratch (after a change of the embedded recipes).
pretrained: install
	$(BIN)/python -m idls.pretrained.rebuild

bench: install
	$(BIN)/python benchmarks/interpreters.py
	$(BIN)/python benchmarks/pgd_cost.py
	$(BIN)/python benchmarks/joint_cost.py

clean:
	rm -rf $(VENV) runs build site *.egg-info
