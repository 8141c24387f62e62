# `make run` and `make test` are all a fresh machine needs (Python 3.11 on the PATH).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
MANAGE := $(BIN)/python manage.py
MESSAGES := --locale fr --no-location --no-obsolete --ignore 'tests/*' --ignore 'bench/*' --ignore 'staticfiles/*'

.PHONY: run test install install-test migrate lint format messages check-messages bench clean

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
test: install-test
	$(BIN)/pytest

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

## Performance figures on PostgreSQL and gunicorn (SPEC section 10); see bench/README.md.
bench: install
	$(BIN)/python bench/ingest.py --quick && $(BIN)/python bench/sweep.py

clean:
	rm -rf $(VENV) db.sqlite3 staticfiles
