# facusync developer entry points. `make deps` is idempotent and installs what building and
# testing need on a fresh Debian 12; every other target depends on it.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

APT_PACKAGES := postgresql redis-server freetds-bin python3-venv python3-dev \
	python3-pymssql python3-psycopg2 python3-redis python3-hiredis python3-dateutil \
	python3-sdnotify python3-pythonjsonlogger \
	dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
	lintian systemd-container debootstrap iproute2 procps

.PHONY: deps test test-fast lint demo bench clean

deps: $(VENV)/.installed
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(VENV)/.installed: requirements-dev.txt pyproject.toml
	@command -v dpkg-query >/dev/null && { dpkg-query -W python3-venv >/dev/null 2>&1 || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; }; }
	test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

lint: deps
	$(VENV)/bin/ruff check facusync tests scripts bench
	$(VENV)/bin/mypy

# The whole suite: lint, unit and integration tests against real servers.
test: deps lint
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: deps
	$(PY) -m pytest -q -x -p no:cacheprovider tests/unit

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
