# Benchmarks (docs/benchmarks.md). Included by the top-level Makefile (it uses PY, PIP, VENV and STAMP
# from there); try it alone with
#   make -f Makefile -f mk/bench.mk bench-quick
#
#   make bench           the full run (about 30 minutes): every target at concurrency 1, 16, 64, 256 for 10 s,
#                        CountToken, 10,000 slow streams, the local model, paced streams (bench-paced) and
#                        the verdict table of issue 27's targets; writes bench/results/<stamp>.{json,md},
#                        bench/results/latest.{json,md}, docs/benchmarks.png and the generated part of docs/benchmarks.md
#   make bench-quick     the same at concurrency 1 and 64 for 1.5 s each (under 3 minutes once the tools are built);
#                        writes only bench/results/<stamp>-quick.{json,md,png}
#   make bench-facade    the HTTP facade (OpenAI's POST /v1/chat/completions on the worker's [http] port) against
#                        LiteLLM and against the same worker's gRPC path, all on the instant upstream, unary
#                        and streamed, at concurrency 1 and 64 for 5 s each (about 6 minutes); writes
#                        bench/results/<stamp>-facade.{json,md,png} (the facade rows are in bench and
#                        bench-quick too)
#   make bench-facade-profile  py-spy on that worker while oha drives its facade at c = 64, unary then
#                        streamed: where its CPU goes, by layer (bench/facade.py; about 1 minute);
#                        writes bench/results/<stamp>-facade-profile.{json,md} and the raw stacks
#   make bench-ablation  the echo worker with one layer off at a time (access log, metrics, observer, ORCA, token count)
#   make bench-quota     what tenants' limits ([quota]) cost on the HTTP-provider path: no [quota], in-process
#                        counters, a redis-server on loopback, three interleaved rounds at c = 1 and 64 (about
#                        7 minutes; bench/quota.py); then how far a token limit is overshot under concurrency,
#                        and a requests limit shared by two workers (bench/quota_overshoot.py, under a minute);
#                        writes bench/results/<stamp>-quota.{json,md} and <stamp>-overshoot.{json,md}
#   make bench-route     what a route, a model's two deployments and one failover over a refused
#                        connection cost a call on the HTTP-provider path, against a plain model;
#                        interleaved rounds at c = 1 and 64 (about 9 minutes; bench/route.py); writes
#                        bench/results/<stamp>-route.{json,md}
#   make bench-tools     install the pinned load generators and LiteLLM (each rule above does it)
#
# Pinned tools, each installed under .tools/ by a rule that names its version (bumping a pin reinstalls):
#   ghz      from the Go module proxy (go install), the gRPC load generator
#   oha      from crates.io (cargo install --locked), the HTTP load generator; compiling it takes about 7 minutes on 2 cores
#   LiteLLM  litellm[proxy] from PyPI into its own venv (.tools/litellm-venv), so it cannot disturb modelwire's pins.
#            1.108.7 is the newest release whose [proxy] extra resolves from PyPI here: later ones pin
#            litellm-enterprise/litellm-proxy builds the index does not carry.
#   matplotlib, py-spy   the `bench` extra of pyproject.toml, into .venv

GHZ_VERSION     := v0.120.0
OHA_VERSION     := 1.16.0
LITELLM_VERSION := 1.108.7

PY ?= .venv/bin/python
PIP ?= .venv/bin/pip
VENV ?= .venv
GO ?= go
CARGO ?= cargo
PYTHON ?= python3

BENCH_TOOLS   := $(CURDIR)/.tools
GHZ           := $(BENCH_TOOLS)/ghz-$(GHZ_VERSION)/ghz
OHA           := $(BENCH_TOOLS)/oha-$(OHA_VERSION)/bin/oha
LITELLM_VENV  := $(BENCH_TOOLS)/litellm-venv
LITELLM       := $(LITELLM_VENV)/bin/litellm
LITELLM_STAMP := $(LITELLM_VENV)/.litellm-$(LITELLM_VERSION)
BENCH_STAMP   := $(VENV)/.bench-installed

BENCH_ARGS := --ghz $(GHZ) --ghz-version $(GHZ_VERSION) --oha $(OHA) --oha-version $(OHA_VERSION) --litellm $(LITELLM)

.PHONY: bench bench-quick bench-facade bench-facade-profile bench-ablation bench-quota bench-route bench-tools

bench: $(BENCH_STAMP) bench-tools
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP) bench-tools
	$(PY) bench/run.py --quick $(BENCH_ARGS)

bench-facade: $(BENCH_STAMP) bench-tools
	$(PY) bench/run.py --only modelwire-http,facade,litellm --levels 1,64 --duration 5 --name facade $(BENCH_ARGS)

bench-facade-profile: $(BENCH_STAMP) $(OHA)
	$(PY) bench/facade.py --oha $(OHA)

bench-ablation: $(BENCH_STAMP) $(GHZ)
	$(PY) bench/ablation.py --ghz $(GHZ)

# `redis` (mk/redis.mk) makes sure a redis-server is installed; $(REDIS) names it to the scripts.
bench-quota: $(BENCH_STAMP) $(GHZ) redis
	MODELWIRE_REDIS=$(REDIS) $(PY) bench/quota.py --ghz $(GHZ)
	MODELWIRE_REDIS=$(REDIS) $(PY) bench/quota_overshoot.py

bench-route: $(BENCH_STAMP) $(GHZ)
	$(PY) bench/route.py --ghz $(GHZ)

bench-tools: $(GHZ) $(OHA) $(LITELLM_STAMP)

# The project with its `bench` extra (matplotlib for the PNG, py-spy for profiling).
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PIP) install -e '.[local,dev,bench]'
	touch $@

$(GHZ):
	GOBIN=$(@D) $(GO) install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

$(OHA):
	$(CARGO) install oha --version $(OHA_VERSION) --locked --root $(BENCH_TOOLS)/oha-$(OHA_VERSION)

$(LITELLM_STAMP):
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install 'litellm[proxy]==$(LITELLM_VERSION)'
	touch $@

# ---- paced streams (issue 27): bench/pacedload, the Go load generator, and bench-paced ----------
#   make bench-paced     500, 1,000 and 2,000 concurrent streams at 20 tokens/s through modelwire
#                        (one process, and --processes = CPUs) and through LiteLLM, all against
#                        bench/instant_upstream.py --pace 20 (bench/paced.py, about 5 minutes);
#                        writes bench/results/<stamp>-paced.{json,md}. `make bench` runs the same
#                        as its `paced` part.
# pacedload is Go (Python on 2 cores cannot read 2,000 streams × 20 tokens/s); its module uses the
# generated stubs of client_stub/go through a replace directive, with that module's pins.
PACEDLOAD := $(BENCH_TOOLS)/pacedload
PACEDLOAD_SOURCES := $(wildcard bench/pacedload/*.go) bench/pacedload/go.mod bench/pacedload/go.sum \
	$(wildcard client_stub/go/modelwirev1/*.go) client_stub/go/go.mod

.PHONY: bench-paced

bench: $(PACEDLOAD)
BENCH_ARGS += --pacedload $(PACEDLOAD)

bench-paced: $(BENCH_STAMP) $(PACEDLOAD) $(LITELLM_STAMP)
	$(PY) bench/paced.py --pacedload $(PACEDLOAD) --litellm $(LITELLM)

$(PACEDLOAD): $(PACEDLOAD_SOURCES)
	cd bench/pacedload && $(GO) build -o $@ .
