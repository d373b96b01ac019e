# Two commands set everything up on a fresh machine: `make test` and `make demo`.
# Each first creates/refreshes .venv; the stamp is keyed on the requirement files, so a second
# run skips the installs.
PYTHON_VENV ?= .venv
PY := $(PYTHON_VENV)/bin/python
SETUP_INPUTS := setup.py requirements/lock.txt requirements/runtime.txt requirements/torch.txt \
	requirements/test.txt tools/install_detectron2.py tools/setup_env.sh
STAMP := $(PYTHON_VENV)/.setup-$(shell cat $(SETUP_INPUTS) | sha256sum | cut -c1-16)
export HF_HUB_OFFLINE := 1
PYTEST_ARGS ?=
DEMO_ARGS ?=
DEMO_CLS_ARGS ?=

.PHONY: setup test demo demo-cls
setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	bash tools/setup_env.sh $(PYTHON_VENV)
	rm -f $(PYTHON_VENV)/.setup-*
	touch $@

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: setup
	$(PY) tools/demo.py $(DEMO_ARGS)

demo-cls: setup
	$(PY) benchmarks/cls_accuracy.py $(DEMO_CLS_ARGS)
