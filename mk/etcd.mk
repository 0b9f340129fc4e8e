# etcd for the registry tests (tests/etcd_server.py). Included by the top-level Makefile; `make pytest`
# builds it first and names it to the tests in MODELWIRE_ETCD.
#
#   make etcd   build the etcd server pinned in mk/etcd/go.mod from the Go module proxy into
#               .tools/etcd/etcd (about 1.5 minutes on 2 cores the first time; editing the pin rebuilds)
#
# etcd's own main package cannot be `go install`ed at a version (its go.mod replaces its sibling
# modules with local paths), so mk/etcd/ is a one-file module that requires the release and calls
# etcd's entry point.

GO ?= go

ETCD := $(CURDIR)/.tools/etcd/etcd

.PHONY: etcd

etcd: $(ETCD)

$(ETCD): mk/etcd/go.mod mk/etcd/go.sum mk/etcd/main.go
	cd mk/etcd && $(GO) build -o $@ .
