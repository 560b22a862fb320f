# quaylock: `make serve` runs the registry, `make test` runs the tests.
# Both build .venv from the hash-locked requirements on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
ARGS ?=
PYTEST_ARGS ?=

.PHONY: serve test test-deps lock clean sbom audit

# --clear: a new lock rebuilds the venv, so that a package a release drops
# does not stay installed (and unaudited) from the one before.
$(VENV)/.runtime: requirements.lock pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(PIP) --require-hashes --no-deps -r requirements.lock
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.lock
	$(PIP) --require-hashes --no-deps -r requirements-test.lock
	touch $@

serve: $(VENV)/.runtime
	$(BIN)/quaylock serve $(ARGS)

test-deps:
	./scripts/test-deps

test: $(VENV)/.test test-deps sbom audit
	$(BIN)/pytest $(PYTEST_ARGS)

# Tools that look at the registry from outside live in their own venv, so
# that they are never installed beside it (docs/dependencies.md).
TOOLS := .venv-tools
$(TOOLS)/.installed: requirements-tools.lock
	$(PYTHON) -m venv --clear $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check \
		--require-hashes --no-deps -r requirements-tools.lock
	@# The setuptools `python -m venv` brings is old, and no tool needs it.
	$(TOOLS)/bin/pip uninstall --quiet --disable-pip-version-check -y setuptools \
		2>/dev/null || true
	touch $@

# A CycloneDX SBOM of what is installed in .venv, where the admin API
# (/admin/v1/sbom) and `quaylock doctor` find it.
SBOM := $(VENV)/share/quaylock/sbom.cdx.json
sbom: $(SBOM)
$(SBOM): $(VENV)/.runtime $(wildcard $(VENV)/.test) $(TOOLS)/.installed
	mkdir -p $(dir $(SBOM))
	$(TOOLS)/bin/cyclonedx-py environment --pyproject pyproject.toml \
		--output-reproducible --of JSON -o $(SBOM) $(BIN)/python
	@echo "sbom: $(SBOM)"

# Re-pin every dependency, with hashes (needs network access to PyPI). No
# option Renovate's pip-compile manager does not know goes in the command
# it reads back from each lock's header; this machine's wheel folder is
# dropped from the output instead.
lock:
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet pip-tools
	for name in requirements requirements-test requirements-tools; do \
		.lock-venv/bin/pip-compile -q --generate-hashes --allow-unsafe \
			--strip-extras --no-emit-index-url -o $$name.lock $$name.in || exit 1; \
		sed -i '/^--find-links /d' $$name.lock; \
	done
	rm -rf .lock-venv

# Offline audit of every lock against a local advisory snapshot (the PyPA
# database). Where the snapshot sits: beside this checkout, else beside the
# repository it was cloned from (CI clones /work/main into /tmp).
ADVISORIES ?= $(firstword $(wildcard ../shared/advisories/pypa \
	$(shell git config remote.origin.url 2>/dev/null)/../shared/advisories/pypa))

LOCKS := requirements.lock requirements-test.lock requirements-tools.lock

# The offline audit gates; pip-audit then asks its online service, and says
# plainly which pins it could not audit (scripts/online-audit).
audit: $(VENV)/.runtime $(TOOLS)/.installed
	@test -n "$(ADVISORIES)" || { echo "audit: no advisory snapshot found in" \
		"../shared/advisories/pypa or beside the origin repository;" \
		"set ADVISORIES=path to a PyPA advisory-database snapshot" >&2; exit 2; }
	@status=0; for lock in $(LOCKS); do \
		$(BIN)/python -m quaylock.supply.audit --advisories $(ADVISORIES) \
			--lock $$lock || { rc=$$?; [ $$rc -gt $$status ] && status=$$rc; }; \
	done; exit $$status
	@$(TOOLS)/bin/python scripts/online-audit $(TOOLS)/bin/pip-audit $(LOCKS)

clean:
	rm -rf $(VENV) $(TOOLS) data

# Side-by-side benchmark against CNCF Distribution: needs docker-registry and
# wrk (Debian packages); takes about 8 minutes. BENCH_ARGS=--quick for a smoke
# run; bench/README.md says how to read the report.
BENCH_ARGS ?=

.PHONY: bench
bench: $(VENV)/.runtime
	$(BIN)/python bench/run.py $(BENCH_ARGS)
