# syntho-agent: the commands a developer (and CI) runs. `make help` lists them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help venv engine images lint test unit build demo faults release-faults soak soak-short launcher-e2e bench bench-ray-tls ray-temp-long clean

help:
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.done: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.done ## the development virtualenv (.venv)

engine: ## install (if needed) and start the Docker engine, wait until it answers
	bash .ci/engine.sh

images: venv engine ## build the test images that are missing (cached by recipe hash)
	$(PY) tests/images/build.py

lint: venv ## ruff and mypy
	$(PY) -m ruff check agent tests bench build.py zipapp_main.py
	$(PY) -m mypy
	$(PY) -m mypy --python-version 3.9 agent  # the zipapp runs on Python 3.9 and later
	shellcheck .ci/run .ci/engine.sh examples/*.sh agent/assets/*.sh tests/images/*/*.sh

unit: venv ## the unit tests only (no engine needed)
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

test: venv engine images lint ## everything CI runs: lint, then every test on the real engine, in two shards at once (tests/shards.py)
	$(PY) -m tests.shards $(PYTEST_ARGS)

build: venv ## the zipapps in dist/
	$(PY) build.py

demo: build images ## the main job: head, a worker and the app on this machine, from local images
	bash examples/demo.sh

faults: venv engine images ## the fault-injection suite alone (the agent SIGKILLed 30 times; CI: 10)
	SYNTHO_FAULT_KILLS=30 $(PY) -m pytest -q -m faults tests $(PYTEST_ARGS)

release-faults: venv engine images ## SIGKILL at 20 points of upgrades and rollbacks (CI: 2)
	SYNTHO_RELEASE_KILLS=20 $(PY) -m pytest -q -s tests/integration/test_release_faults.py $(PYTEST_ARGS)

soak: build venv engine images ## the full chaos soak across the simulated VMs (MINUTES=30 SEED= NO_GCS_FT=1)
	$(PY) bench/soak.py --minutes $(or $(MINUTES),30) $(if $(SEED),--seed $(SEED)) $(if $(NO_GCS_FT),--no-gcs-ft)

soak-short: build venv engine images ## the 5-minute chaos soak alone (seed 1717; make test runs it too)
	$(PY) -m pytest -q -s tests/soak/test_soak_short.py $(PYTEST_ARGS)

launcher-e2e: build venv engine images ## Ray's cluster launcher alone: live `ray up` on simulated VMs, the autoscaler, the schema (make test runs them too)
	$(PY) -m pytest -q -s tests/integration/test_ray_up.py tests/integration/test_autoscaling.py tests/integration/test_launcher_schema.py $(PYTEST_ARGS)

bench: venv engine images ## the benchmarks (bench/RESULTS.md)
	$(PY) bench/run_all.py

ray-temp-long: venv engine images ## Ray's temp dir retention at a longer scale (2,000 chatty tasks in processes of their own)
	SYNTHO_RAY_TEMP_TASKS=2000 $(PY) -m pytest -q -s tests/integration/test_ray_temp.py $(PYTEST_ARGS)

bench-ray-tls: build venv engine images ## Ray with mutual TLS against plain, two simulated VMs, one run (bench/ray_tls.py; QUICK=1: a short one; ROUNDS=3: three of each)
	$(PY) bench/ray_tls.py $(if $(QUICK),--quick) $(if $(ROUNDS),--rounds $(ROUNDS))

clean: ## remove build output
	rm -rf dist build *.egg-info
