# The two commands of the README. Both set up .venv/ first (scripts/setup.sh, idempotent).
.PHONY: run test setup

setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/segflow run

test: setup
	.venv/bin/python -m pytest -q
