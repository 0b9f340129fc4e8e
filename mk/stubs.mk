# Polyglot stubs, proto hygiene and the live interop stage.
# Included by the top-level Makefile (it uses PY, VENV and STAMP from there); try it alone with
#   make -f Makefile -f mk/stubs.mk interop
#
#   make stubs           regenerate Python, Go and Java stubs from protos/**/*.proto (committed files)
#   make check-stubs     regenerate into a temporary tree; fail if it differs from the committed stubs
#   make lint-proto      buf lint (buf.yaml)
#   make breaking-proto  buf breaking: protos/ against the previous commit's protos/
#   make interop         start a worker on a free port; run the Go test, the Java test and grpcurl against it
#   make stub-tools      install the pinned code generators and tools into .tools/ (each rule above does it)
#
# Every tool is pinned here and installed on first use into .tools/NAME-VERSION/, so bumping a pin
# reinstalls it (`make stub-tools` also links them as .tools/bin/NAME): the Go tools with `go install`
# from the Go module proxy, the Java plugin and the Java generator's protoc with `mvn dependency:copy`
# from Maven Central. Caches: .tools/, the Go module and build caches (go env GOMODCACHE GOCACHE) and
# ~/.m2; a fresh machine fills them on its first run (about 3.5 minutes for the tools, most of it
# compiling buf and grpcurl).

PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
BUF_VERSION                := v1.75.0
GRPCURL_VERSION            := v1.9.4
# The newest protoc-gen-grpc-java whose linux executable Maven Central serves (1.84.x/1.85.x lack it).
GRPC_JAVA_PLUGIN_VERSION   := 1.83.1
# Must be the protoc release that grpcio-tools bundles (`python -m grpc_tools.protoc --version`:
# libprotoc 35.1 is protobuf-java 4.35.1); scripts/gen_stubs.sh fails when they differ.
PROTOC_JAVA_VERSION        := 4.35.1
MVN_DEPENDENCY_PLUGIN      := org.apache.maven.plugins:maven-dependency-plugin:3.11.0

PY ?= .venv/bin/python
VENV ?= .venv

TOOLS := $(CURDIR)/.tools
TOOLS_BIN := $(TOOLS)/bin
MVN ?= mvn
GO ?= go
# Maven Central names the native executables by OS and CPU (linux-x86_64, linux-aarch_64, osx-x86_64, ...).
MVN_CLASSIFIER := $(subst darwin,osx,$(shell uname -s | tr A-Z a-z))-$(subst aarch64,aarch_64,$(subst arm64,aarch_64,$(shell uname -m)))

PROTOC_GEN_GO        := $(TOOLS)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION)/protoc-gen-go
PROTOC_GEN_GO_GRPC   := $(TOOLS)/protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)/protoc-gen-go-grpc
BUF                  := $(TOOLS)/buf-$(BUF_VERSION)/buf
GRPCURL              := $(TOOLS)/grpcurl-$(GRPCURL_VERSION)/grpcurl
PROTOC_GEN_GRPC_JAVA := $(TOOLS)/protoc-gen-grpc-java-$(GRPC_JAVA_PLUGIN_VERSION)/protoc-gen-grpc-java
PROTOC_JAVA          := $(TOOLS)/protoc-$(PROTOC_JAVA_VERSION)/protoc-java-generator

STUB_GENERATORS := $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC) $(PROTOC_GEN_GRPC_JAVA) $(PROTOC_JAVA)
STUB_ENV := PY=$(PY) PROTOC_GEN_GO=$(PROTOC_GEN_GO) PROTOC_GEN_GO_GRPC=$(PROTOC_GEN_GO_GRPC) \
	PROTOC_GEN_GRPC_JAVA=$(PROTOC_GEN_GRPC_JAVA) PROTOC_JAVA=$(PROTOC_JAVA)

.PHONY: stubs check-stubs lint-proto breaking-proto interop stub-tools

stubs: $(STAMP) $(STUB_GENERATORS)
	$(STUB_ENV) scripts/gen_stubs.sh

check-stubs: $(STAMP) $(STUB_GENERATORS)
	$(STUB_ENV) scripts/check_stubs.sh

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

# mvn dependency:copy GROUP:ARTIFACT:VERSION:exe:CLASSIFIER into .tools/ARTIFACT-VERSION/, made executable.
define maven_exe
	rm -rf $(@D) && mkdir -p $(@D)
	$(MVN) -B -q -Dstyle.color=never $(MVN_DEPENDENCY_PLUGIN):copy -Dartifact=$(1):$(2):exe:$(MVN_CLASSIFIER) -DoutputDirectory=$(@D)
	mv $(@D)/$(lastword $(subst :, ,$(1)))-$(2)-$(MVN_CLASSIFIER).exe $@ && chmod +x $@
endef

$(PROTOC_GEN_GRPC_JAVA):
	$(call maven_exe,io.grpc:protoc-gen-grpc-java,$(GRPC_JAVA_PLUGIN_VERSION))

$(PROTOC_JAVA):
	$(call maven_exe,com.google.protobuf:protoc,$(PROTOC_JAVA_VERSION))
