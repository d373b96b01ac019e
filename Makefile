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
# The official Detectron2 (main) that `make test-d2main` builds with its C++ ops and tests against,
# installed beside the default build in its own folder on PYTHONPATH.
D2_SOURCE ?= $(firstword $(wildcard ../shared/vendor/detectron2-*.tar.gz))
D2MAIN_TARGET ?= $(PYTHON_VENV)/detectron2-main

.PHONY: setup test test-d2main demo demo-cls
setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	bash tools/setup_env.sh $(PYTHON_VENV)
	rm -f $(PYTHON_VENV)/.setup-*
	touch $@

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-d2main: setup
	@test -n "$(D2_SOURCE)" || { echo "make test-d2main: no ../shared/vendor/detectron2-*.tar.gz; set D2_SOURCE=PATH to an official Detectron2 source archive or tree" >&2; exit 2; }
	$(PY) tools/install_detectron2.py --source "$(D2_SOURCE)" --target "$(D2MAIN_TARGET)"
	PYTHONPATH="$(abspath $(D2MAIN_TARGET))$${PYTHONPATH:+:$$PYTHONPATH}" TOPKD_EXPECT_DETECTRON2=official \
		$(PY) -m pytest tests $(PYTEST_ARGS)

demo: setup
	$(PY) tools/demo.py $(DEMO_ARGS)

demo-cls: setup
	$(PY) benchmarks/cls_accuracy.py $(DEMO_CLS_ARGS)
