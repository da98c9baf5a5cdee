# make run : create .venv if missing, install, evaluate the digits suite, regenerate leaderboard.md
# make test: the offline, CPU-only test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
WORKERS ?= 2

.PHONY: install run test leaderboard validate zoo shifts-picture calibrate clean-venv

TEST_STAMP := $(VENV)/.installed-test-stamp

# `make run` needs the package alone; the test extras (pytest, hypothesis, Ray, submitit, selenium)
# come with `make test` (Ray alone is about a quarter of the install time)
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e .
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,site-test]'
	@touch $(TEST_STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/shiftbench validate
	$(BIN)/shiftbench run --suite digits --workers $(WORKERS)
	$(BIN)/shiftbench leaderboard --suite digits

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

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
