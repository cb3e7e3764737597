# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.neve-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test lint data install bench clean docs package-check

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch/torchvision first, at the versions that lie on this machine's disk,
# so that `pip install -e .` finds them satisfied and downloads no other build.
$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e .[test,timm,docs]
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST from Debian's package `dataset-fashion-mnist` (installed when root).
data:
	@if [ ! -f $(FMNIST) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q dataset-fashion-mnist || \
	     (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; \
	  else \
	    echo "note: Fashion-MNIST not found; run 'sudo apt-get install dataset-fashion-mnist'"; \
	  fi; \
	fi

demo: install data
	$(PY) examples/quickstart.py

lint: install
	$(PY) -m ruff check .

# the docs (a minute) and the packaging (build, fresh venv, quickstart) first, then the suite
test: install data lint docs package-check
	$(PY) -m pytest -q

# Sphinx site under docs/_build/html, warnings as errors
docs: install
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@test -n "$$NEVE_MATHJAX" || grep -q 'src="../_static/mathjax/tex-chtml.js"' \
	  docs/_build/html/methods/analytic.html || \
	  (echo "docs: the pages do not load the MathJax shipped with the site"; exit 1)

# sdist + wheel, the wheel installed into a fresh venv under build/, imported and run outside the clone
package-check: install
	PY=$(abspath $(PY)) .ci/package-check

bench: install data
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info build dist docs/_build docs/api/generated

# Mutation testing of the math modules (mutmut 3, `pip install -e .[dev]`), on demand, not in CI:
# a copy laid out as src/neve/... so that mutmut's mutants import as neve.*; see [mutmut] in
# setup.cfg for the modules and tests. Survivors: `cd .mutation && mutmut results`.
MUTATION := .mutation
.PHONY: mutation
mutation: install
	$(PY) -m pip install -q -e .[dev]
	rm -rf $(MUTATION) && mkdir -p $(MUTATION)/src/neve
	cp -r models plugins strategies benchmarks $(MUTATION)/src/neve/
	cp neve/__init__.py $(MUTATION)/src/neve/
	cp -r tests setup.cfg pyproject.toml $(MUTATION)/
	cd $(MUTATION) && $(abspath $(PY)) -m mutmut run; $(abspath $(PY)) -m mutmut results
