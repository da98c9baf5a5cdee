# make run : create .venv if missing, install, evaluate the digits suite, regenerate leaderboard.md
# make test: the offline, CPU-only test suite
# make defenses: the digits-defenses suite (randomized and preprocessing defenses beside their twins)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# one worker process per core, at most 8 (each holds torch and a model, about 1 GB); the numbers do not
# depend on it (every example's draws and micro-batches are its own), only the time does
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 8 ] && n=8; echo $$n)

.PHONY: install run defenses test leaderboard validate zoo shifts-picture calibrate clean-venv

TEST_STAMP := $(VENV)/.installed-test-stamp
TEST_EXTRAS := .[test,site-test]

# The install goes through uv: the same pinned set (constraints.txt) as pip, in about half the time
# (it unpacks the multi-GB torch wheels in parallel and compiles the bytecode on every core).  uv
# gets pip's own index settings (`pip config list`: index-url, extra-index-url, find-links) and
# pip's rule of taking the best version from all of them, so both install from the same places.
# If uv cannot be installed or fails, pip does the install.
PIP_INDEXES = $(shell $(PYTHON) -m pip config list 2>/dev/null \
  | sed -n -E "s/^[^.]*\.(index-url|extra-index-url|find-links)='(.*)'$$/\1 \2/p" \
  | awk '{for (i = 2; i <= NF; i++) printf "--%s %s ", $$1, $$i}')
PIP_INSTALL = $(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt
UV_INSTALL = $(BIN)/uv pip install -q --python $(BIN)/python --index-strategy unsafe-best-match \
  --compile-bytecode $(PIP_INDEXES) -c constraints.txt
# $(call install_with_uv,<requirement>): install into the venv
install_with_uv = ( $(BIN)/python -m pip install -q --disable-pip-version-check uv && $(UV_INSTALL) $(1) ) \
  || { echo "make: the uv install failed; installing with pip"; $(PIP_INSTALL) $(1); }

# `make run` needs the package alone; the test extras (pytest, hypothesis, Ray, submitit, selenium)
# come with `make test` (Ray alone is about a quarter of the install time)
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(call install_with_uv,-e .)
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(call install_with_uv,-e '$(TEST_EXTRAS)')
	@touch $(TEST_STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/shiftbench validate
	$(BIN)/shiftbench run --suite digits --workers $(WORKERS)
	$(BIN)/shiftbench leaderboard --suite digits

# the digits zoo's defenses beside their twins (EOT, BPDA; docs/defenses.md): about 5 minutes, kept out of
# `make run`, which takes long enough (README); the board's "Defenses" section reads its results
defenses: $(STAMP)
	$(BIN)/shiftbench run --suite digits-defenses --workers $(WORKERS)
	$(BIN)/shiftbench leaderboard --suite digits

# the tests run on one worker process per core (pytest-xdist; at most 4: each holds torch and its
# own models), each test sent to the next free worker but those marked xdist_group(name), which
# share one (the local Ray clusters)
TEST_WORKERS ?= auto
test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4 --dist loadgroup --durations 25

leaderboard: $(STAMP)
	$(BIN)/shiftbench leaderboard --suite digits

validate: $(STAMP)
	$(BIN)/shiftbench validate

zoo: $(STAMP)
	$(BIN)/shiftbench zoo train

shifts-picture: $(STAMP)
	$(BIN)/shiftbench show-shifts --suite digits --out docs/shifts-digits.png

calibrate: $(STAMP)
	$(BIN)/python perf/attack_calibration.py

clean-venv:
	rm -rf $(VENV)
