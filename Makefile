# The two commands of the README. Both set up .venv/ first (scripts/setup.sh, idempotent).
.PHONY: run test setup lint

setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/segflow run

test: setup
	.venv/bin/python -m pytest -q

# CI runs this before the tests: the formatter's verdict and the linter (configured in pyproject.toml).
lint: setup
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .
