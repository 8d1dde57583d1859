# Two commands do everything on a fresh machine with Python >= 3.10 and make:
#   make book   build the website into _build/html (warnings are errors)
#   make test   run the whole test suite
#   make lab    (students) JupyterLab on exercises/, with nbgrader's student tools only
# Each creates/updates the virtual environment in .venv itself and is idempotent.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ASSIGNMENTS := $(notdir $(wildcard solutions/[0-9]*))
PYTEST_WORKERS ?= 2

.PHONY: book test venv browser sandbox postgres exercises lab clean help

help:
	@echo "make book       build the website into _build/html"
	@echo "make test       run the whole test suite (sets everything up itself)"
	@echo "make lab        (students) open the exercises in JupyterLab (sets everything up itself)"
	@echo "make exercises  regenerate exercises/ from solutions/ with nbgrader"
	@echo "make clean      remove build output (keeps .venv)"

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=68" wheel
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/jupyter labextension enable nbgrader >/dev/null 2>&1 || true
	touch $@

# Headless Chromium for the browser test of the built site (Debian packages).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

# bubblewrap: the sandbox the grader runs student code in (Debian package).
sandbox:
	@command -v bwrap >/dev/null || \
	  { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq bubblewrap >/dev/null; }

# PostgreSQL (Debian package) for the gradebook-server tests: they run initdb and pg_ctl (in
# /usr/lib/postgresql/<version>/bin, not on PATH) on a server of their own in a temporary folder.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

book: $(STAMP)
	$(BIN)/jupyter-book build . --warningiserror --keep-going --builder html
	@echo "website: _build/html/index.html"

# One torch thread per xdist worker: two workers with two threads each on a 2-core machine
# spend most of their time fighting over the cores.
test: $(STAMP) browser sandbox postgres
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -q -rs --timeout 1500

exercises: $(STAMP)
	rm -rf exercises && mkdir -p exercises
	for a in $(ASSIGNMENTS); do \
	  $(BIN)/nbgrader generate_assignment "$$a" --force --no-db --log-level=WARN || exit 1; \
	done

# Students: JupyterLab on exercises/ only (solutions/ is not in its file browser), with nbgrader's
# Assignments panel and Validate button and without the instructor's Formgrader, Course List and Create
# Assignment. grader/lab/ holds those settings and the exchange settings below; it is put on JUPYTER_CONFIG_PATH
# for this command only, so no one's own Jupyter configuration changes. The exchange directory is the one
# the instructor releases into; it is created (world-writable, as nbgrader needs) when it is missing and
# can be. JupyterLab runs in LAB_DIR (nbgrader's Assignments panel fetches into and submits from the
# server's working directory, whatever its root_dir); its Submit refuses the fetched copy while it is still
# blank and exercises/<assignment>/ has the work, and says so (grader/lab/submit.py). As root (a container)
# --allow-root is added.
# LAB_DIR and LAB_ARGS (more `jupyter lab` options) are for tests/test_lab.py.
NBGRADER_EXCHANGE ?= /usr/local/share/nbgrader/exchange
NBGRADER_COURSE   ?= transformer-course
LAB_DIR  ?= exercises
LAB_ARGS ?=
lab: $(STAMP)
	@test -d "$(NBGRADER_EXCHANGE)" || { mkdir -p "$(NBGRADER_EXCHANGE)" && chmod 0777 "$(NBGRADER_EXCHANGE)"; } 2>/dev/null || \
	  echo "note: cannot create the exchange directory $(NBGRADER_EXCHANGE); the Assignments panel needs the one your instructor released into: make lab NBGRADER_EXCHANGE=..."
	cd "$(LAB_DIR)" && \
	  JUPYTER_CONFIG_PATH="$(CURDIR)/grader/lab" NBGRADER_EXCHANGE="$(NBGRADER_EXCHANGE)" NBGRADER_COURSE="$(NBGRADER_COURSE)" \
	  "$(abspath $(BIN))/jupyter" lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

clean:
	rm -rf _build autograded feedback submitted gradebook.db
