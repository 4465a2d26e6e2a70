VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vssm-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

.PHONY: install data test test-all demo clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	scripts/install.sh $(VENV)
	touch $(STAMP)

data: $(FASHION_MNIST)

$(FASHION_MNIST):
	scripts/install_data.sh

test: install data
	$(PY) -m pytest -q -m "not slow"

test-all: install data
	$(PY) -m pytest -q

# train vmamba_femto on Fashion-MNIST here (its steps fitted to 7.5 min of training: --time-budget), evaluate it, show the outputs
demo: install data
	$(PY) -m vssm demo --output runs/demo

clean:
	rm -rf $(VENV) .pytest_cache
