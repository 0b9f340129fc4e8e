# Polyglot stubs, proto hygiene and the live interop stage.
# Included by the top-level Makefile (it uses PY, VENV and STAMP from there); try it alone with
#   make -f Makefile -f mk/stubs.mk interop
#
#   make stubs           regenerate the committed Python and Go stubs from protos/**/*.proto
#   make check-stubs     regenerate them into a temporary tree and fail if that differs from the committed
#                        ones; then build the Java stubs (mvn compile), which Maven generates itself
#   make lint-proto      buf lint (buf.yaml)
#   make breaking-proto  buf breaking: every commit that changed protos/ against its parent, and
#                        uncommitted edits against HEAD
#   make interop         start a worker on a free port; run the Go test, the Java test, grpcurl and a Go
#                        consumer module at the stubs' minimum versions (go, grpc-go, protobuf-go) against it
#   make stub-tools      install the pinned code generators and tools into .tools/ (each rule above does it)
#
# Every Go tool is pinned here and installed on first use into .tools/NAME-VERSION/ with `go install`
# from the Go module proxy, so bumping a pin reinstalls it (`make stub-tools` also links them as
# .tools/bin/NAME). The Java stubs are not committed: client_stub/java/pom.xml generates them in every
# Maven build (protobuf-maven-plugin, with protoc and protoc-gen-grpc-java from Maven Central, pinned
# there). Caches: .tools/, the Go module and build caches (go env GOMODCACHE GOCACHE) and ~/.m2; a fresh
# machine fills them on its first run (about 3.5 minutes for the tools, most of it compiling buf and
# grpcurl).

PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
BUF_VERSION                := v1.75.0
GRPCURL_VERSION            := v1.9.4

PY ?= .venv/bin/python
VENV ?= .venv

TOOLS := $(CURDIR)/.tools
TOOLS_BIN := $(TOOLS)/bin
MVN ?= mvn
GO ?= go

PROTOC_GEN_GO        := $(TOOLS)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION)/protoc-gen-go
PROTOC_GEN_GO_GRPC   := $(TOOLS)/protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)/protoc-gen-go-grpc
BUF                  := $(TOOLS)/buf-$(BUF_VERSION)/buf
GRPCURL              := $(TOOLS)/grpcurl-$(GRPCURL_VERSION)/grpcurl

STUB_GENERATORS := $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC)
STUB_ENV := PY=$(PY) PROTOC_GEN_GO=$(PROTOC_GEN_GO) PROTOC_GEN_GO_GRPC=$(PROTOC_GEN_GO_GRPC)

.PHONY: stubs check-stubs lint-proto breaking-proto interop stub-tools

stubs: $(STAMP) $(STUB_GENERATORS)
	$(STUB_ENV) scripts/gen_stubs.sh

check-stubs: $(STAMP) $(STUB_GENERATORS)
	$(STUB_ENV) MVN=$(MVN) scripts/check_stubs.sh

lint-proto: $(BUF)
	$(BUF) lint

breaking-proto: $(BUF)
	BUF=$(BUF) scripts/buf_breaking.sh

interop: $(STAMP) $(GRPCURL)
	MODELWIRE=$(VENV)/bin/modelwire GRPCURL=$(GRPCURL) scripts/interop.sh

# Also links each pinned tool as .tools/bin/NAME, for use by hand (docs/interop.md).
stub-tools: $(STUB_GENERATORS) $(BUF) $(GRPCURL)
	mkdir -p $(TOOLS_BIN)
	for tool in $^; do ln -sfn "$$tool" $(TOOLS_BIN)/; done

# go install PACKAGE@VERSION into .tools/NAME-VERSION/.
define go_tool
	GOBIN=$(@D) $(GO) install $(1)@$(2)
endef

$(PROTOC_GEN_GO):
	$(call go_tool,google.golang.org/protobuf/cmd/protoc-gen-go,$(PROTOC_GEN_GO_VERSION))

$(PROTOC_GEN_GO_GRPC):
	$(call go_tool,google.golang.org/grpc/cmd/protoc-gen-go-grpc,$(PROTOC_GEN_GO_GRPC_VERSION))

$(BUF):
	$(call go_tool,github.com/bufbuild/buf/cmd/buf,$(BUF_VERSION))

$(GRPCURL):
	$(call go_tool,github.com/fullstorydev/grpcurl/cmd/grpcurl,$(GRPCURL_VERSION))
