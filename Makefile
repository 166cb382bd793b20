# facusync developer entry points. `make deps` is idempotent and installs what building and
# testing need on a fresh Debian 12; every other target depends on it.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

APT_PACKAGES := postgresql redis-server freetds-bin python3-venv python3-dev \
	python3-pymssql python3-psycopg2 python3-redis python3-hiredis python3-dateutil \
	python3-sdnotify python3-pythonjsonlogger python3-prometheus-client \
	dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
	lintian systemd-container debootstrap iproute2 procps openssl \
	chromium chromium-driver python3-selenium
# Installed without their Recommends: prometheus for promtool (make test-rules) alone, not
# node_exporter and its hardware collectors.
APT_PACKAGES_LEAN := prometheus

.PHONY: deps test test-suite test-fast lint demo bench clean deb test-system

deps: $(VENV)/.installed
	@missing() { for p in "$$@"; do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q '^install ok installed' || echo $$p; done; }; \
	full=$$(missing $(APT_PACKAGES)); lean=$$(missing $(APT_PACKAGES_LEAN)); \
	if [ -n "$$full$$lean" ]; then \
		echo "installing: $$full $$lean"; apt-get update -q || exit 1; \
	fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	if [ -n "$$full" ]; then apt-get install -y -q $$full || exit 1; fi; \
	if [ -n "$$lean" ]; then apt-get install -y -q --no-install-recommends $$lean || exit 1; fi

$(VENV)/.installed: requirements-dev.txt pyproject.toml devstack/pyproject.toml
	@command -v dpkg-query >/dev/null && { dpkg-query -W python3-venv >/dev/null 2>&1 || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; }; }
	test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e devstack
	touch $@

lint: deps
	$(VENV)/bin/ruff check facusync devstack tests scripts bench
	$(VENV)/bin/mypy

# The whole suite, what CI runs: lint; unit and integration tests against real servers; the
# .deb on a booted systemd; the chaos run (CHAOS_MINUTES, 3 by default); a real NocoDB.
test: deps lint test-rules test-suite test-system test-chaos test-nocodb

# The Prometheus alert rules shipped in examples/prometheus (installed with the package's
# examples): the example configuration and rules parse, and promtool's unit tests hold, with
# series that must fire each alert and series that must not.
.PHONY: test-rules
test-rules: deps
	cd examples/prometheus && promtool check config prometheus.yml && \
		promtool test rules facusync-alerts.test.yml

# Unit and integration tests only (the long suites above skip themselves here).
test-suite: deps
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: deps
	$(PY) -m pytest -q -x -p no:cacheprovider tests/unit

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The Debian package (dist/facusync_<version>_all.deb), built with debhelper in a scratch copy
# of the tree and checked by lintian (no errors, no warnings).
deb: deps
	scripts/build-deb dist

# The .deb installed and run in booted Debian 12 containers (root; the containers' root is
# built once by scripts/nspawn-root and cached in /var/cache/facusync-test): the package's
# behaviour on systemd, the README's Administration commands typed as written (Debian's
# PostgreSQL and Redis), and the upgrade from the previous release's tag (its .deb built once
# by scripts/release-deb).
test-system: deb
	scripts/nspawn-root
	FACUSYNC_SYSTEM_TEST=1 FACUSYNC_DEB=$(CURDIR)/dist/facusync_$$(dpkg-parsechangelog -S Version)_all.deb \
		$(PY) -m pytest -q -x -p no:cacheprovider tests/system

# The whole pipeline on a throwaway local stack in about two minutes: PostgreSQL, Redis and
# the SQL Server stand-in, the real daemons, a live workload, then reconcile, status and
# verify (exit 0 only with 0 differences). DEMO_ROWS=50000 DEMO_SECONDS=60 DEMO_RATE=25
# change it; see scripts/demo.py.
demo: deps
	scripts/demo

# NocoDB acceptance: planners edit tracking rows through each real NocoDB in NOCODB_VERSIONS
# (installed once each, keyed by version and lock, into /var/cache/facusync-test/nocodb by
# tests/nocodb/install.sh; about 4 minutes each the first time, nothing afterwards) while the
# real daemons sync, and through a headless chromium (tests/nocodb/test_browser.py).
NOCODB_VERSIONS ?= 0.262.5 0.301.3
.PHONY: test-nocodb
test-nocodb: deps
	set -o pipefail; homes=""; for version in $(NOCODB_VERSIONS); do \
		home=$$(tests/nocodb/install.sh $$version | tail -n 1) || exit 1; homes="$$homes $$home"; \
	done; \
	FACUSYNC_NOCODB_TEST=1 FACUSYNC_NOCODB_HOMES="$$homes" \
		$(PY) -m pytest -q -p no:cacheprovider -rs tests/nocodb

# The chaos suite (tests/chaos): both daemons as real processes against private servers, with
# crashes, outages and poison rows injected from a printed seed; then drain, reconcile and check
# that nothing was lost. CHAOS_MINUTES=60 for a soak, CHAOS_SEED=S to replay a failed run,
# CHAOS_PG_OUTAGE=seconds for PostgreSQL's outages (default 30). CHAOS_MINUTES is at least 3
# (every fault kind runs in every run; the long ones alone take up to 2.8 minutes).
CHAOS_MINUTES ?= 3
.PHONY: test-chaos
test-chaos: deps
	FACUSYNC_CHAOS=1 FACUSYNC_CHAOS_MINUTES=$(CHAOS_MINUTES) FACUSYNC_CHAOS_SEED=$(CHAOS_SEED) \
		FACUSYNC_CHAOS_PG_OUTAGE=$(CHAOS_PG_OUTAGE) \
		$(PY) -m pytest -q -s -p no:cacheprovider tests/chaos

# Benchmarks (bench/README.md): the consumer's write path beside COPY and the naive baseline, a
# 1,000,000-row backfill through the real daemons beside the raw read, change latency and idle
# CPU, all in one run on private servers. Prints a table and writes bench/results.json; about
# 9 minutes. BENCH_ARGS="--quick" is the seconds-long smoke mode (numbers meaningless).
bench: deps
	$(PY) -m bench.run $(BENCH_ARGS)

# The cost of TLS (PostgreSQL verify-full, Redis tls-port) on the consumer write path and the
# backfill, next to plaintext in one run (bench/tls.py; bench/README.md).
.PHONY: bench-tls
bench-tls: deps
	$(PY) -m bench.tls $(BENCH_ARGS)
