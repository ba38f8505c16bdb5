# wagate: `make run` (gate on an embedded Kafka) and `make test` set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KAFKA := deploy/kafka/kafka.sh
# Helm, built from its Go module with the machine's Go (pinned; the chart tests run `helm lint` and
# `helm template`). GOFLAGS=-mod=mod: no go.mod here.
HELM_VERSION := v4.3.2
HELM := .tools/helm-$(HELM_VERSION)/helm
export KAFKA_PORT ?= 9092

.PHONY: help venv kafka-fetch kafka-start kafka-stop prometheus-tools helm-tool run webhook demo test unit lint schemas bench bench-scale clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed  ## create .venv with the package and dev tools

kafka-fetch:  ## download the pinned Apache Kafka jars with Maven (deploy/kafka/pom.xml)
	$(KAFKA) fetch

kafka-start: kafka-fetch  ## start the embedded broker on 127.0.0.1:$KAFKA_PORT (data in deploy/kafka/data)
	$(KAFKA) start

kafka-stop:  ## stop the embedded broker by its PID
	$(KAFKA) stop

run: venv kafka-fetch  ## run the gate in the foreground (embedded broker unless KAFKA_BOOTSTRAP_SERVERS is set)
	deploy/run-local.sh

webhook: venv  ## run the webhook receiver (needs WAGATE_WEBHOOK_APP_SECRET; Kafka as for `make run`)
	$(BIN)/wagate webhook

demo: venv  ## replay the store-hours timeline against a running gate and print the decisions
	$(BIN)/wagate demo

lint: venv  ## ruff and mypy
	$(BIN)/ruff check streams tests examples
	$(BIN)/ruff format --check streams tests examples
	$(BIN)/mypy

schemas: venv  ## regenerate schemas/ from the models
	$(BIN)/wagate schemas

unit: venv  ## policy and model tests only (no broker)
	$(BIN)/pytest tests/unit

prometheus-tools:  ## Debian's prometheus package (promtool, prometheus) for the monitoring tests
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; \
	  else echo "install Debian's prometheus package (sudo apt-get install prometheus): the monitoring tests run promtool and Prometheus" >&2; exit 1; fi; }

$(HELM):
	@command -v go >/dev/null || { echo "Go is needed to build Helm $(HELM_VERSION) for the chart tests (Go 1.26: https://go.dev/dl/)" >&2; exit 1; }
	GOBIN=$(abspath $(dir $(HELM))) GOFLAGS=-mod=mod go install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)

helm-tool: $(HELM)  ## build Helm (pinned) from its Go module, for the chart tests

test: venv kafka-fetch prometheus-tools helm-tool  ## lint, schema drift check, unit + integration tests (starts and stops a broker)
	$(MAKE) --no-print-directory lint
	$(BIN)/wagate schemas --check
	$(BIN)/wagate dashboard --check
	WAGATE_HELM=$(abspath $(HELM)) $(BIN)/pytest tests

.venv-quix/.installed: deploy/bench/quix-requirements.txt
	$(PYTHON) -m venv .venv-quix
	.venv-quix/bin/pip install -q -r $<
	touch $@

bench: venv kafka-fetch .venv-quix/.installed  ## gate vs Quix Streams and a bare aiokafka loop, 200k requests over 50k contacts; prints JSON
	deploy/bench-local.sh

bench-scale: venv kafka-fetch  ## 1, 2, 4 workers on 8 and 16 partitions of a 3-broker cluster; prints JSON
	deploy/bench-scale-local.sh

clean:  ## remove local state (venv, broker data, RocksDB)
	rm -rf $(VENV) deploy/kafka/data var
