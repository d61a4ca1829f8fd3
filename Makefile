# `make serve`: serve the embedded demo model on 127.0.0.1:8080 (nginx -> gunicorn -> flask).
# `make test`:  run every test against the real stacks.
# Both create .venv with the pinned dependencies and install nginx / Java when missing;
# `make test` also creates .venv-sdk (the SageMaker SDK and locust), which serving never needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: serve test bench deps venv sdk-venv system-packages clean

serve: deps
	SERVE_BIND_HOST=$${SERVE_BIND_HOST:-127.0.0.1} $(PY) -m serve

test: deps sdk-venv
	$(PY) -m pytest $(PYTEST_ARGS)

bench: deps
	$(PY) bench/stacks_bench.py

deps: $(VENV)/.installed system-packages

venv: $(VENV)/.installed sdk-venv

sdk-venv: .venv-sdk/.installed

$(VENV)/.installed: requirements/cpu.txt requirements/test.txt
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r requirements/test.txt
	touch $@

# The deployer's tools, for the tests of the deploy guide and the load-test kit: the SageMaker
# SDK (its local mode deploys the image) and locust. Their own venv: the SDK needs protobuf<7.
.venv-sdk/.installed: requirements/sdk.txt
	$(PYTHON) -m venv .venv-sdk
	.venv-sdk/bin/pip install --disable-pip-version-check -q -r requirements/sdk.txt
	touch $@

# nginx for the flask stack, Java for multi-model-server, gcc for the stand-in CUDA libraries
# of tests/handlers/test_cuda.py.
system-packages:
	@missing=""; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v java >/dev/null 2>&1 || missing="$$missing openjdk-17-jre-headless"; \
	command -v gcc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	fi

clean:
	rm -rf $(VENV) .venv-sdk .pytest_cache
