# The two commands of the README. Both set up .venv on first use (dev/setup_env.sh).
PY := .venv/bin/python

.PHONY: env demo test lint

env:
	@./dev/setup_env.sh

# Main job: synthetic benchmark -> train the small GLIP on CPU -> evaluate -> draw predictions.
demo: env
	$(PY) demo/main_job.py

# The test suite (CI runs exactly this).
test: env
	$(PY) -m pytest tests -q -p no:cacheprovider

lint: env
	.venv/bin/ruff check glip_d2 tests train_net.py demo benchmarks datasets
	.venv/bin/ruff format --check glip_d2 tests train_net.py demo benchmarks datasets
