# The two commands of the README. Both set up .venv on first use (dev/setup_env.sh).
PY := .venv/bin/python

.PHONY: env demo test lint web

env:
	@./dev/setup_env.sh

# Main job: synthetic benchmark -> train the small GLIP on CPU -> evaluate -> draw predictions.
demo: env
	$(PY) demo/main_job.py

# Web demo: a local page (http://127.0.0.1:7860/) to try the main job's model (trained first
# if missing) on uploaded images; WEB_ARGS passes options, e.g. WEB_ARGS="--port 8000".
web: env
	$(PY) demo/web.py $(WEB_ARGS)

# The test suite (CI runs exactly this).
test: env
	$(PY) -m pytest tests -q -p no:cacheprovider

lint: env
	.venv/bin/ruff check glip_d2 tests train_net.py demo benchmarks datasets
	.venv/bin/ruff format --check glip_d2 tests train_net.py demo benchmarks datasets
