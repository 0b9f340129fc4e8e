#!/usr/bin/env bash
# The live interop stage (`make interop`): starts a worker on the embedded default model on a free
# port (and its HTTP facades on another), runs the Go interop test, the Java interop test, the mwcall
# CLI, grpcurl and a Go module of its own on the stubs' minimum versions against its gRPC port, and
# the official OpenAI Go SDK (client_stub/go/openai_interop) against its OpenAI facade; stops the
# worker, and fails when any of them failed. Prints how long each stage took.
#
#   MODELWIRE=.venv/bin/modelwire GRPCURL=path/to/grpcurl scripts/interop.sh
#
# Environment:
#   MODELWIRE              the worker's CLI (default .venv/bin/modelwire)
#   GRPCURL                grpcurl (default .tools/bin/grpcurl)
#   MODELWIRE_MODEL        model the clients call (default gemma-3-270m, the embedded default)
#   INTEROP_READY_TIMEOUT  seconds to wait for the worker to be ready (default 180)
# The tests skip without MODELWIRE_ADDR (the OpenAI SDK's test without MODELWIRE_OPENAI_BASE_URL); this
# script always sets them, and sets MODELWIRE_INTEROP_REQUIRED=1
# so that a test that cannot find the worker fails instead; it also fails when any test was skipped.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MODELWIRE=${MODELWIRE:-.venv/bin/modelwire}
GRPCURL=${GRPCURL:-.tools/bin/grpcurl}
[[ $MODELWIRE == /* ]] || MODELWIRE=$ROOT/$MODELWIRE
[[ $GRPCURL == /* ]] || GRPCURL=$ROOT/$GRPCURL
export MODELWIRE_MODEL=${MODELWIRE_MODEL:-gemma-3-270m}
READY_TIMEOUT=${INTEROP_READY_TIMEOUT:-180}
HOST=127.0.0.1

WORK=$(mktemp -d)
WORKER_LOG=$WORK/worker.log
WORKER_PID=
declare -a SUMMARY=()
PASSED=0
FAILED=0
START_ALL=$(date +%s%N)

log() { echo "interop: $*"; }

# Maven quietly, without the stray colour resets that Debian's mvn prints even in batch mode.
mvn_quiet() {
	mvn -B -q "$@" 2>&1 | sed -u $'s/\x1b\\[0m//g'
	return "${PIPESTATUS[0]}"
}

elapsed() { # start_ns -> seconds with one decimal
	local ns=$(($(date +%s%N) - $1))
	printf '%d.%d' $((ns / 1000000000)) $((ns / 100000000 % 10))
}

stop_worker() {
	[[ -n $WORKER_PID ]] || return 0
	if kill -0 "$WORKER_PID" 2>/dev/null; then
		kill -TERM "$WORKER_PID" 2>/dev/null
		for _ in $(seq 1 150); do
			kill -0 "$WORKER_PID" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$WORKER_PID" 2>/dev/null; then
			log "worker $WORKER_PID ignored SIGTERM for 15 s; killing it"
			kill -KILL "$WORKER_PID" 2>/dev/null
		fi
	fi
	wait "$WORKER_PID" 2>/dev/null
	WORKER_PID=
}

cleanup() {
	stop_worker
	stop_secure_fleet
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
	"$ROOT/.venv/bin/python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Runs one stage: stage NAME COMMAND...; records its time and result.
stage() {
	local name=$1
	shift
	local start
	start=$(date +%s%N)
	log "---- $name"
	if "$@"; then
		SUMMARY+=("$(printf '%-13s ok     %6ss' "$name" "$(elapsed "$start")")")
		PASSED=$((PASSED + 1))
	else
		SUMMARY+=("$(printf '%-13s FAILED %6ss' "$name" "$(elapsed "$start")")")
		FAILED=$((FAILED + 1))
	fi
}

# ---- the stages

start_worker() {
	# The port is free when picked; the worker binds it a moment later (grpc sets SO_REUSEPORT, so a
	# worker never fails to bind: readiness is checked on the address it announces).
	local port http_port
	port=$(free_port) && http_port=$(free_port) || return 1
	while [[ $http_port == "$port" ]]; do http_port=$(free_port) || return 1; done
	ADDR=$HOST:$port
	FACADE_BASE_URL=http://$HOST:$http_port/v1
	"$MODELWIRE" serve --host "$HOST" --port "$port" --http-port "$http_port" >"$WORKER_LOG" 2>&1 &
	WORKER_PID=$!
	log "worker pid $WORKER_PID starting on $ADDR (OpenAI facade $FACADE_BASE_URL)"
}

wait_ready() {
	local deadline=$((SECONDS + READY_TIMEOUT))
	while ((SECONDS < deadline)); do
		if grep -q "^modelwire serving .* on $ADDR\$" "$WORKER_LOG"; then
			log "worker ready on $ADDR"
			return 0
		fi
		if ! kill -0 "$WORKER_PID" 2>/dev/null; then
			wait "$WORKER_PID"
			log "worker exited with status $? before it was ready; its log:"
			cat "$WORKER_LOG"
			WORKER_PID=
			return 1
		fi
		sleep 0.2
	done
	log "worker not ready after ${READY_TIMEOUT}s; its log:"
	cat "$WORKER_LOG"
	return 1
}

compile_clients() {
	(cd client_stub/go && go vet ./... && go build ./... && go test -count=1 -run '^$' ./... >/dev/null) &&
		(cd client_stub/java && mvn_quiet test-compile)
}

go_test() {
	local out=$WORK/go-test.log
	(cd client_stub/go && MODELWIRE_ADDR=$ADDR MODELWIRE_INTEROP_REQUIRED=1 go test -count=1 -v ./...) 2>&1 | tee "$out"
	local rc=${PIPESTATUS[0]}
	((rc == 0)) || return "$rc"
	if grep -q -- '--- SKIP' "$out"; then
		log "go: some tests were skipped"
		return 1
	fi
	local passed
	passed=$(grep -c -- '^--- PASS' "$out")
	log "go: $passed tests passed"
	((passed > 0))
}

java_test() {
	rm -rf client_stub/java/target/surefire-reports
	(cd client_stub/java && MODELWIRE_ADDR=$ADDR MODELWIRE_INTEROP_REQUIRED=1 mvn_quiet test) || return 1
	# -q hides Surefire's summary: read it from the reports.
	"$ROOT/.venv/bin/python" - client_stub/java/target/surefire-reports <<'EOF'
import sys, xml.etree.ElementTree as ET
from pathlib import Path
totals = dict(tests=0, failures=0, errors=0, skipped=0)
for report in Path(sys.argv[1]).glob("TEST-*.xml"):
    suite = ET.parse(report).getroot()
    for key in totals:
        totals[key] += int(suite.get(key, "0"))
print("interop: java: Tests run: {tests}, Failures: {failures}, Errors: {errors}, Skipped: {skipped}".format(**totals))
sys.exit(0 if totals["tests"] > 0 and totals["failures"] + totals["errors"] + totals["skipped"] == 0 else 1)
EOF
}

# ---- a Go module outside this repository that uses the stubs from the checkout the way
# docs/interop.md says (go mod edit -replace, go mod tidy), at the minimums client_stub/go/go.mod
# promises its consumers: go 1.21, grpc-go v1.64.0 (the first with grpc.SupportPackageIsVersion9,
# which the generated *_grpc.pb.go assert) and protobuf-go v1.33.0 (what grpc-go v1.64.0 needs; the
# generated *.pb.go need go1.20's unsafe.StringData). Built while the model loads; run against it.
CONSUMER_GO=1.21
CONSUMER_MINIMUMS=(google.golang.org/grpc@v1.64.0 google.golang.org/protobuf@v1.33.0)
CONSUMER=$WORK/go-consumer

go_consumer_build() {
	mkdir -p "$CONSUMER"
	cat >"$CONSUMER/main.go" <<'GO'
// A program outside the modelwire repository on its Go stubs: ListModels, then a four-token
// Generate; it exits non-zero unless both answer.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	modelwirev1 "github.com/modelwire/modelwire/client_stub/go/modelwirev1"
)

func main() {
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(addr, model string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := modelwirev1.NewModelWorkerClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	models, err := client.ListModels(ctx, &modelwirev1.ListModelsRequest{})
	if err != nil {
		return fmt.Errorf("ListModels: %w", err)
	}
	output, err := client.Generate(ctx, &modelwirev1.ModelRequest{
		Model:    model,
		Messages: []*modelwirev1.ModelMessage{{Role: modelwirev1.Role_ROLE_USER, Content: "Hello"}},
		Sampling: &modelwirev1.SamplingParams{
			Temperature: proto.Float32(0), MaxNewTokens: proto.Int32(4),
		},
	})
	if err != nil {
		return fmt.Errorf("Generate: %w", err)
	}
	if output.GetFinishReason() == modelwirev1.FinishReason_FINISH_REASON_UNSPECIFIED ||
		output.GetUsage().GetCompletionTokens() == 0 {
		return fmt.Errorf("Generate: no finish reason or no tokens: %v", output)
	}
	fmt.Printf("%d models; Generate: %s, %d tokens\n", len(models.GetModels()),
		output.GetFinishReason(), output.GetUsage().GetCompletionTokens())
	return nil
}
GO
	local requires=() module
	for module in "${CONSUMER_MINIMUMS[@]}"; do requires+=("-require=$module"); done
	# GOTOOLCHAIN=local: this machine's go, whatever a go.mod asks for.
	(cd "$CONSUMER" && export GOTOOLCHAIN=local &&
		go mod init example.com/consumer 2>/dev/null &&
		go mod edit -go="$CONSUMER_GO" "${requires[@]}" \
			-replace "github.com/modelwire/modelwire/client_stub/go=$ROOT/client_stub/go" &&
		go mod tidy 2>/dev/null && go vet ./... && go build -o consumer .) || return 1
	# Nothing in the stubs' module may have raised the consumer above the minimums.
	local got want="$CONSUMER_GO ${CONSUMER_MINIMUMS[*]}"
	got=$(cd "$CONSUMER" && export GOTOOLCHAIN=local && go list -m -f '{{.GoVersion}}' &&
		go list -m -f '{{.Path}}@{{.Version}}' "${CONSUMER_MINIMUMS[@]%@*}") || return 1
	got=$(echo $got)
	[[ $got == "$want" ]] || { log "after go mod tidy the consumer has $got, not $want"; return 1; }
	log "go-min: a consumer module with go $CONSUMER_GO, ${CONSUMER_MINIMUMS[*]} builds"
}

go_consumer_call() {
	"$CONSUMER/consumer" "$ADDR" "$MODELWIRE_MODEL"
}

# ---- the official OpenAI Go SDK (github.com/openai/openai-go/v3, pinned in its module's go.mod)
# against the worker's OpenAI facade (docs/api.md, "HTTP facades"): a unary chat completion, a
# streamed one through the SDK's ChatCompletionAccumulator, the models list, an unknown model (404)
# and n=2 (400, param n), each as the SDK sees it. A module of its own beside the stubs', so the SDK
# never enters the stubs' requirements; its dependencies come from the Go module proxy (go env
# GOPROXY) into the module cache, as the other Go stages' do. Compiled while the model loads.
OPENAI_GO=client_stub/go/openai_interop

openai_go_build() {
	(cd "$OPENAI_GO" && go vet ./... && go test -count=1 -run '^$' ./... >/dev/null)
}

openai_go_test() {
	local out=$WORK/go-openai.log
	(cd "$OPENAI_GO" && MODELWIRE_OPENAI_BASE_URL=$FACADE_BASE_URL MODELWIRE_INTEROP_REQUIRED=1 go test -count=1 -v ./...) 2>&1 | tee "$out"
	local rc=${PIPESTATUS[0]}
	((rc == 0)) || return "$rc"
	if grep -q -- '--- SKIP' "$out"; then
		log "go-openai: some tests were skipped"
		return 1
	fi
	local passed
	passed=$(grep -c -- '^--- PASS' "$out")
	log "go-openai: $passed tests passed with the OpenAI Go SDK against $FACADE_BASE_URL"
	((passed > 0))
}

mwcall_cli() {
	local out
	out=$(cd client_stub/go && go run ./cmd/mwcall -addr "$ADDR" -model "$MODELWIRE_MODEL" -temperature 0 -max-new-tokens 8 stream "Hello") || return 1
	echo "$out"
	grep -q "finish_reason=FINISH_REASON_" <<<"$out"
}

grpcurl_calls() {
	local out
	# The services, through server reflection.
	out=$("$GRPCURL" -plaintext "$ADDR" list) || return 1
	echo "$out"
	for service in modelwire.v1.ModelWorker grpc.health.v1.Health grpc.reflection; do
		grep -q "^$service" <<<"$out" || { log "grpcurl list lacks $service"; return 1; }
	done
	out=$("$GRPCURL" -plaintext "$ADDR" describe modelwire.v1.ModelWorker) || return 1
	for rpc in GenerateStream Embed; do
		grep -q "rpc $rpc" <<<"$out" || { log "grpcurl describe lacks $rpc: $out"; return 1; }
	done
	# Generate with a JSON body (the command docs/interop.md shows).
	out=$("$GRPCURL" -plaintext -d '{
	  "model": "'"$MODELWIRE_MODEL"'",
	  "messages": [{"role": "ROLE_USER", "content": "Write one sentence about the sea."}],
	  "sampling": {"temperature": 0, "max_new_tokens": 16}
	}' "$ADDR" modelwire.v1.ModelWorker/Generate) || return 1
	echo "$out"
	"$ROOT/.venv/bin/python" -c '
import json, sys
out = json.loads(sys.argv[1])
assert out.get("text"), "no text"
assert out.get("finish_reason", "FINISH_REASON_UNSPECIFIED") != "FINISH_REASON_UNSPECIFIED", "no finish_reason"
assert out["usage"]["completion_tokens"] > 0, "no completion tokens"
' "$out" || return 1
	# Health, for the server and for the service.
	for service in "" modelwire.v1.ModelWorker; do
		out=$("$GRPCURL" -plaintext -d "{\"service\": \"$service\"}" "$ADDR" grpc.health.v1.Health/Check) || return 1
		grep -q '"SERVING"' <<<"$out" || { log "health of '$service': $out"; return 1; }
	done
	# An unknown model: grpcurl exits non-zero and prints the status code.
	if out=$("$GRPCURL" -plaintext -d '{"model": "no-such-model", "messages": [{"role": "ROLE_USER", "content": "hi"}]}' \
		"$ADDR" modelwire.v1.ModelWorker/Generate 2>&1); then
		log "Generate(no-such-model) succeeded: $out"
		return 1
	fi
	grep -q "Code: NotFound" <<<"$out" || { log "Generate(no-such-model): $out"; return 1; }
	log "grpcurl: list, describe, Generate (JSON), health and NOT_FOUND as expected"
}

# ---- a secured fleet: controller, worker and gateway with TLS and tokens, on this machine's
# routable address (not loopback), and the Go client through the gateway.

SECURE_PIDS=()

stop_secure_fleet() {
	for pid in "${SECURE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for pid in "${SECURE_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
	SECURE_PIDS=()
}

wait_line() { # file pattern seconds: waits until the file has a line matching pattern
	local deadline=$((SECONDS + $3))
	while ((SECONDS < deadline)); do
		grep -q -- "$2" "$1" && return 0
		sleep 0.2
	done
	log "no '$2' in $1 after $3 s:"
	cat "$1"
	return 1
}

secure_fleet() {
	local ip certs=$WORK/certs dir=$WORK/secure
	ip=$("$ROOT/.venv/bin/python" -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("192.0.2.1", 9))
print(s.getsockname()[0])') || return 1
	[[ $ip != 127.* ]] || { log "no address beyond loopback on this machine"; return 1; }
	mkdir -p "$dir"
	scripts/make_certs.sh "$certs" "$ip" >/dev/null || return 1
	export MW_WORKER_TOKEN=worker-token-$RANDOM$RANDOM$RANDOM MW_GATEWAY_TOKEN=gateway-token-$RANDOM$RANDOM$RANDOM
	export MW_CONTROLLER_TOKEN=controller-token-$RANDOM$RANDOM$RANDOM
	local caller=caller-token-$RANDOM$RANDOM$RANDOM
	cat >"$dir/tokens.toml" <<TOKENS
[[tokens]]
name = "worker"
token = "$MW_WORKER_TOKEN"
permissions = ["register"]
[[tokens]]
name = "gateway"
token = "$MW_GATEWAY_TOKEN"
permissions = ["generate", "read_fleet", "relay"]
[[tokens]]
name = "caller"
token = "$caller"
permissions = ["generate"]
[[tokens]]
name = "controller"
token = "$MW_CONTROLLER_TOKEN"
permissions = ["read_fleet"]
TOKENS
	local tls="[tls]
cert_file = \"$certs/server.pem\"
key_file = \"$certs/server.key\"
[auth]
tokens_file = \"$dir/tokens.toml\"
protect_health = true"
	local cport wport gport
	cport=$(free_port) && wport=$(free_port) && gport=$(free_port) || return 1
	# The controller's health prober needs the workers' TLS and a token for their protected health.
	printf '[server]\nhost = "%s"\nport = %s\n%b\n[controller.workers]\ntoken_env = "MW_CONTROLLER_TOKEN"\n[controller.workers.tls]\nca_file = "%s"\n' \
		"$ip" "$cport" "$tls" "$certs/ca.pem" >"$dir/controller.toml"
	printf '[server]\nhost = "%s"\nport = %s\n%b\n[registry]\ncontroller = "%s:%s"\ntoken_env = "MW_WORKER_TOKEN"\n[registry.tls]\nca_file = "%s"\n' \
		"$ip" "$wport" "$tls" "$ip" "$cport" "$certs/ca.pem" >"$dir/worker.toml"
	# settle_s = 0: the worker registered before the gateway starts, so an unknown model is NOT_FOUND at once.
	printf '[server]\nhost = "%s"\nport = %s\n%b\n[registry]\ncontroller = "%s:%s"\ntoken_env = "MW_GATEWAY_TOKEN"\n[registry.tls]\nca_file = "%s"\n[gateway]\nsettle_s = 0\n[gateway.workers]\ntoken_env = "MW_GATEWAY_TOKEN"\n[gateway.workers.tls]\nca_file = "%s"\n' \
		"$ip" "$gport" "$tls" "$ip" "$cport" "$certs/ca.pem" "$certs/ca.pem" >"$dir/gateway.toml"
	"$MODELWIRE" controller --config "$dir/controller.toml" >"$dir/controller.log" 2>&1 &
	SECURE_PIDS+=($!)
	wait_line "$dir/controller.log" "^modelwire controller on" 30 || return 1
	"$MODELWIRE" serve --config "$dir/worker.toml" >"$dir/worker.log" 2>&1 &
	SECURE_PIDS+=($!)
	wait_line "$dir/worker.log" "^modelwire serving" "$READY_TIMEOUT" || return 1
	"$MODELWIRE" gateway --config "$dir/gateway.toml" >"$dir/gateway.log" 2>&1 &
	SECURE_PIDS+=($!)
	wait_line "$dir/gateway.log" "gateway SERVING" 30 || return 1
	wait_line "$dir/gateway.log" "health SERVING" 30 || return 1 # the worker's protected health, seen with the gateway's token
	local out=$WORK/go-secure.log
	(cd client_stub/go && MODELWIRE_ADDR=$ip:$gport MODELWIRE_CA_FILE=$certs/ca.pem MODELWIRE_TOKEN=$caller \
		MODELWIRE_INTEROP_REQUIRED=1 go test -count=1 -v ./interop/) 2>&1 | tee "$out"
	local rc=${PIPESTATUS[0]}
	stop_secure_fleet
	((rc == 0)) || return "$rc"
	! grep -q -- '--- SKIP' "$out" || { log "go (secure): some tests were skipped"; return 1; }
	log "go through the TLS+auth gateway: $(grep -c -- '^--- PASS' "$out") tests passed"
	if grep -q -e "$MW_WORKER_TOKEN" -e "$MW_GATEWAY_TOKEN" -e "$MW_CONTROLLER_TOKEN" -e "$caller" "$dir"/*.log; then
		log "a token appears in a log"
		return 1
	fi
}

# ---- run them

[[ -x $MODELWIRE ]] || { log "no worker CLI at $MODELWIRE (make install)"; exit 1; }
[[ -x $GRPCURL ]] || { log "no grpcurl at $GRPCURL (make stub-tools)"; exit 1; }

ADDR=
FACADE_BASE_URL=
start_worker || exit 1
stage compile compile_clients # while the model loads
stage go-min go_consumer_build
stage go-openai openai_go_build

stage worker wait_ready
if [[ -n $WORKER_PID ]]; then
	stage go go_test
	stage java java_test
	stage mwcall mwcall_cli
	stage grpcurl grpcurl_calls
	stage go-min-run go_consumer_call
	stage go-openai-run openai_go_test
	if ! kill -0 "$WORKER_PID" 2>/dev/null; then
		log "the worker died during the interop stage; its log:"
		cat "$WORKER_LOG"
		SUMMARY+=("$(printf '%-13s FAILED (died)' worker-alive)")
		FAILED=$((FAILED + 1))
	fi
fi
stop_worker
stage secure secure_fleet
stop_secure_fleet

log "==== summary (worker on $ADDR)"
for line in "${SUMMARY[@]}"; do
	log "  $line"
done
log "  $(printf '%-13s' total) $(elapsed "$START_ALL")s"
echo "interop: $PASSED passed, $FAILED failed"
((FAILED == 0))
