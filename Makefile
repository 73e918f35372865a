# mla-operator. The two commands a newcomer needs: `make run` and `make test`.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

BIN          ?= $(CURDIR)/bin
CONTROLLER_GEN := go tool controller-gen
# envtest and the local cluster find kube-apiserver, etcd and kubectl here.
export KUBEBUILDER_ASSETS ?= $(BIN)
GO_TEST_FLAGS ?=
IMG_OPERATOR ?= ghcr.io/mla-operator/operator:dev
IMG_WORKER   ?= ghcr.io/mla-operator/worker:dev

.PHONY: all
all: build

##@ Development

.PHONY: generate
generate: ## Generate deepcopy code.
	$(CONTROLLER_GEN) object paths=./api/...

.PHONY: manifests
manifests: ## Generate the CRD and RBAC manifests from markers.
	$(CONTROLLER_GEN) crd:allowDangerousTypes=true rbac:roleName=mla-operator-manager paths=./api/... paths=./controllers/... \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac

.PHONY: fmt
fmt: ## gofmt the tree.
	gofmt -l -w $$(git ls-files -co --exclude-standard '*.go')

.PHONY: vet
vet: ## go vet, also the code behind the cuda build tag.
	go vet ./...
	@if [ -f /usr/include/cuda.h ]; then echo "vet -tags cuda"; go vet -tags cuda ./...; \
	else echo "vet -tags cuda skipped: no CUDA headers (apt-get install nvidia-cuda-dev, as .ci/run does)"; fi

.PHONY: verify
verify: ## Fail when generated files or formatting are stale.
	@$(MAKE) -s generate manifests
	@if [ -n "$$(git status --porcelain -- api config)" ]; then \
		echo "generated files are stale; run 'make generate manifests' and commit:"; git status --porcelain -- api config; exit 1; fi
	@if [ -n "$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go'))" ]; then \
		echo "gofmt needed:"; gofmt -l $$(git ls-files -co --exclude-standard '*.go'); exit 1; fi
	@hack/verify-kernels.sh

.PHONY: build
build: ## Build the operator and worker into bin/.
	go build -o $(BIN)/operator ./cmd/operator
	go build -o $(BIN)/worker ./cmd/worker
	go build -o $(BIN)/mla-local ./cmd/mla-local

.PHONY: build-cuda
build-cuda: ## Build the worker with the CUDA engine (needs CUDA 11.8 headers).
	go build -tags cuda -o $(BIN)/worker-cuda ./cmd/worker

.PHONY: bins
bins: ## Build etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kubectl and kwok from source (cached).
	hack/bins.sh

##@ Test

.PHONY: test
test: verify vet bins build test-scripts ## Unit, integration (envtest) and end-to-end tests.
	go test $(GO_TEST_FLAGS) -count=1 ./...

.PHONY: test-scripts
test-scripts: ## The GPU machine's scripts, checked without a GPU: syntax, and the promote step's self-test.
	for f in hack/*.sh hack/gpu/*.sh; do bash -n "$$f" || exit 1; done
	python3 hack/gpu/promote.py self-test >/dev/null

.PHONY: test-unit
test-unit: ## Unit tests only (no control plane).
	go test $(GO_TEST_FLAGS) -count=1 $$(go list ./... | grep -v /test/)

.PHONY: bench
bench: bins ## Benchmarks (placement, reconcile, CPU engine, worker API).
	go test -run '^$$' -bench . -benchmem ./...

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 20s).
	hack/fuzz.sh $${FUZZTIME:-20s}

##@ Run

.PHONY: run
run: bins build ## The whole system on a local simulated GPU cluster.
	$(BIN)/mla-local --bin-dir $(BIN) --operator $(BIN)/operator --worker $(BIN)/worker $(RUN_ARGS)

##@ GPU

.PHONY: kernels
kernels: ## Compile the CUDA kernels for sm_90a (needs nvcc >= 12.8; run on the GPU machine).
	hack/build-kernels.sh

.PHONY: kernels-frontend
kernels-frontend: ## Compile the kernels' C++ with any nvcc, no GPU (catches C++ errors before a GPU run).
	hack/kernels-frontend.sh

.PHONY: kernels-assemble
kernels-assemble: ## Build the GPU benchmark and kernels for sm_90a with Debian trixie's CUDA 12.4 (fetched once, ~1 GB), no GPU: ptxas and link errors, registers, spills.
	nvcc=$$(hack/hopper-toolkit.sh) && NVCC=$$nvcc KERNELS_DEPTH=sm_90a hack/kernels-frontend.sh

##@ Images

.PHONY: docker-build
docker-build: ## Build the operator and worker images (needs a Docker engine).
	docker build -f Dockerfile.operator -t $(IMG_OPERATOR) .
	docker build -f Dockerfile.worker -t $(IMG_WORKER) .
	docker build -f Dockerfile.worker --build-arg ENGINE=cuda -t $(IMG_WORKER)-cuda .

.PHONY: help
help:
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  %-14s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)
