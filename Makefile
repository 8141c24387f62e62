# `make run` and `make test` are all a fresh machine needs (Python 3.11 on the PATH).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
MANAGE := $(BIN)/python manage.py
MESSAGES := --locale fr --no-location --no-obsolete --ignore 'tests/*' --ignore 'bench/*' --ignore 'staticfiles/*'

.PHONY: run test test-instants instants screenshots install install-test migrate lint format messages check-messages bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

migrate: install
	$(MANAGE) migrate --noinput

## Serve the back-office on the embedded default (SQLite, eager Celery, console mail).
run: migrate
	$(MANAGE) seed_demo
	DEBUG=$${DEBUG:-1} $(MANAGE) runserver 127.0.0.1:8000

## The whole suite; set DATABASE_URL and CELERY_BROKER_URL to run it on PostgreSQL and Redis.
## TEST_NOW=2027-03-28T00:59:00Z make test runs it with the clock moved to that instant.
test: install-test
	$(BIN)/pytest

# Instants where a date built wrongly from "now" lands in the future or in another period:
# the first minute of the year (and of a month) in Europe/Paris, the factories' zone, while
# UTC is still in the old year; 29 February, in the first minute of March in
# Pacific/Kiritimati (UTC+14); the last minute of a month in Pacific/Pago_Pago (UTC-11); and
# 30 s before both DST changes of Europe/Paris in 2027, so that the change happens during
# the run. CI runs the whole suite at the first (`make test` with TEST_NOW) and
# test-instants' selection at the others. The browser tests (about 40 s more, see README)
# run in the whole suites only: they read the periods through the same selectors that the
# rest of the suite tests at these instants. So do the modules marked ``timeless``
# (Schemathesis and the access matrix, about two thirds of the suite's time): what they
# assert, the API's contract and who may do what, no clock decides.
INSTANTS ?= 2026-12-31T23:00:30Z 2028-02-29T10:00:30Z 2027-02-01T10:59:30Z \
	2027-03-28T00:59:30Z 2027-10-31T00:59:30Z

## Print INSTANTS (what .ci/run reads).
instants:
	@echo $(INSTANTS)

## The suite on the embedded default once per instant of INSTANTS, INSTANT_JOBS at a time
## (each run is one process on its own in-memory database); prints the log of a failing run.
INSTANT_JOBS ?= 2
test-instants: install-test
	@mkdir -p .instants
	@printf '%s\n' $(INSTANTS) | xargs -P $(INSTANT_JOBS) -I '{}' sh -c '\
		log=".instants/$$(echo {} | tr : -).log"; \
		if env -u DATABASE_URL -u CELERY_BROKER_URL -u REQUIRE_SERVICES TEST_NOW={} \
			$(BIN)/pytest -q -x -p no:cacheprovider -m "not browser and not timeless" >"$$log" 2>&1; \
		then echo "== suite at TEST_NOW={}: $$(tail -n 1 "$$log")"; \
		else cat "$$log"; echo "the suite fails at TEST_NOW={}"; exit 255; fi'

# The screenshots of docs/admin.md: artifact of a browser test -> image in docs/images/.
DOC_SCREENSHOTS := \
	test_usage_posted_through_the_api_shows_on_the_accounts_list-en-1440-list.png:accounts-list.png \
	test_warning_threshold_needs_a_recipient_then_shows_in_the_history-en-refused-window.png:limits-refused.png \
	test_warning_threshold_needs_a_recipient_then_shows_in_the_history-en-history-window.png:limits-history.png \
	test_a_scoped_limit_is_added_and_its_usage_shows-en-added-window.png:scoped-limit.png \
	test_a_scoped_limit_is_added_and_its_usage_shows-en-charts-window.png:usage-charts.png \
	test_a_scoped_limit_is_added_and_its_usage_shows-fr-charts-window.png:usage-charts-fr.png \
	test_failed_delivery_is_resent_and_its_new_status_shows-en-resent.png:delivery-resent.png

## Run the browser tests, then copy the screenshots that docs/admin.md shows into docs/images/.
screenshots: install-test
	rm -rf artifacts/screenshots
	$(BIN)/pytest -q -p no:cacheprovider -m browser tests/browser
	@mkdir -p docs/images
	@for pair in $(DOC_SCREENSHOTS); do \
		cp "artifacts/screenshots/$${pair%%:*}" "docs/images/$${pair##*:}" || exit 1; \
		echo "docs/images/$${pair##*:}"; \
	done

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Refresh locale/fr from the code, then compile it (needs GNU gettext).
messages: install
	$(MANAGE) makemessages $(MESSAGES)
	$(MANAGE) compilemessages --locale fr --ignore '.venv/*'

## Fails when locale/ is out of date with the code or a French string is missing.
check-messages: messages
	@test -z "$$(msgattrib --untranslated --no-obsolete locale/fr/LC_MESSAGES/django.po)" \
		|| { echo "untranslated strings in locale/fr:"; msgattrib --untranslated --no-obsolete locale/fr/LC_MESSAGES/django.po; exit 1; }
	@git diff --quiet -I '^"POT-Creation-Date' -- locale \
		|| { echo "locale/ is out of date: run 'make messages' and commit"; git diff --stat -- locale; exit 1; }

## Performance figures on PostgreSQL, Redis, gunicorn and a Celery worker, each against its floor
## (SPEC section 10), then written into docs/performance.md's generated block; see bench/README.md.
## BENCH_ARGS goes to ingest.py (e.g. --cache-url, --broker-url), BENCH_SWEEP_ARGS to sweep.py
## (e.g. --accounts 2000 on a busy machine), BENCH_DATABASE names their databases.
BENCH_RESULTS := .bench
BENCH_SERVERS ?= sync:2,sync:4,gthread:2x4
BENCH_ARGS ?=
BENCH_SWEEP_ARGS ?=
bench: install
	@mkdir -p $(BENCH_RESULTS)
	$(BIN)/python bench/ingest.py --quick --compare-servers $(BENCH_SERVERS) \
		--results $(BENCH_RESULTS)/ingest.json $(BENCH_ARGS)
	$(BIN)/python bench/sweep.py --results $(BENCH_RESULTS)/sweep.json $(BENCH_SWEEP_ARGS)
	$(BIN)/python bench/performance.py $(BENCH_RESULTS)/ingest.json $(BENCH_RESULTS)/sweep.json
	$(BIN)/python bench/plans.py --doc docs/performance.md >/dev/null

clean:
	rm -rf $(VENV) db.sqlite3 staticfiles $(BENCH_RESULTS)
