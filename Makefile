# Every target runs through uv, so the locked environment is the only one in play.
.PHONY: setup setup-user format lint pyright mypy quality test unit integration e2e acceptance bench \
	tensorboard llama-cpp llama-cpp-converters

PYTEST := uv run pytest
SRC := ml_playground tests benchmarks tools/llama_cpp/fetch.py

setup:
	uv venv --clear
	uv sync --all-groups --compile-bytecode

# Only what running the tool needs: no test runner, linters or type checkers.
setup-user:
	uv venv --clear
	uv sync --locked --no-dev --compile-bytecode

format:
	uv run ruff format $(SRC)
	uv run ruff check --fix $(SRC)

lint:
	uv run ruff check $(SRC)
	uv run ruff format --check $(SRC)

pyright:
	uv run pyright

mypy:
	uv run mypy

quality: lint mypy pyright

test:
	$(PYTEST)

unit:
	$(PYTEST) -m unit tests/unit

integration:
	$(PYTEST) -m integration tests/integration

e2e:
	$(PYTEST) -m e2e tests/e2e

acceptance:
	$(PYTEST) -m acceptance tests/acceptance

bench:
	uv run python -m benchmarks.run

tensorboard:
	uv run tensorboard --logdir ml_playground/experiments --bind_all

# llama.cpp's converters (Python, seconds) and its llama-quantize, llama-completion and llama-bench
# (cmake, minutes), from the pinned llama-cpp-python sdist on PyPI; see tools/llama_cpp/README.md.
llama-cpp-converters:
	uv run python tools/llama_cpp/fetch.py converters

llama-cpp: llama-cpp-converters
	uv run python tools/llama_cpp/fetch.py binaries
