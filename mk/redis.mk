# Redis for the tests (tests/redis_server.py). Included by the top-level Makefile; `make pytest`
# installs it first and names it to the tests in MODELWIRE_REDIS.
#
#   make redis   make sure Debian's redis-server package is installed: nothing to do when a
#                redis-server is on PATH, else `apt-get update` and `apt-get install -y
#                --no-install-recommends redis-server` (as root, or through sudo; without either
#                it fails naming the command to run as root)
#
# The binary itself is the target's file: $(REDIS) is the redis-server on PATH when make starts,
# else where the package puts it (/usr/bin/redis-server), which does not exist until the install.
# The package's postinst would start a system redis on 6379: while it installs, a policy-rc.d that
# denies every start keeps it from doing so (only if the machine has none, removed afterwards), so
# no stray server runs beside the ones the tests start.

REDIS := $(or $(shell command -v redis-server 2>/dev/null),/usr/bin/redis-server)

REDIS_INSTALL := apt-get install -y --no-install-recommends redis-server
# What invoke-rc.d asks before it starts a service (policy-rc.d(8)).
POLICY_RC_D := /usr/sbin/policy-rc.d

.PHONY: redis

redis: $(REDIS)

$(REDIS):
	@set -e; \
	if [ "$$(id -u)" = 0 ]; then as=; \
	elif command -v sudo >/dev/null 2>&1; then as=sudo; \
	else echo "redis-server not found; as root run: apt-get update && $(REDIS_INSTALL)" >&2; \
	     exit 1; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "redis-server not found and no apt-get: install redis-server 7 (with TLS)" >&2; \
	    exit 1; fi; \
	if [ ! -e $(POLICY_RC_D) ]; then \
	    trap "$$as rm -f $(POLICY_RC_D)" EXIT; \
	    printf '#!/bin/sh\n# make redis: no service starts while redis-server installs\nexit 101\n' \
	        | $$as tee $(POLICY_RC_D) >/dev/null; \
	    $$as chmod 755 $(POLICY_RC_D); fi; \
	echo "installing redis-server (Debian package) for the tests"; \
	$$as apt-get update -qq; \
	$$as env DEBIAN_FRONTEND=noninteractive $(REDIS_INSTALL) -qq >/dev/null; \
	test -x $@ || { echo "redis-server installed, but not at $@" >&2; exit 1; }
