// Package etcdinterop shows that a Go service finds modelwire workers through etcd with etcd's own
// gRPC resolver (go.etcd.io/etcd/client/v3/naming/resolver) and no modelwire code but the stubs.
//
// The test needs a running etcd and two registered workers; tests/test_etcd_registry.py starts them
// and runs `go test` here with:
//
//	MODELWIRE_ETCD_ENDPOINTS  etcd client endpoints, comma separated (127.0.0.1:2379)
//	MODELWIRE_ETCD_TARGET     the dial target's path: <prefix>/<model> (mw/gemma-3-270m)
//	MODELWIRE_WORKERS         pid@host:port of each worker, comma separated
//	MODELWIRE_MODEL           the model to call (gemma-3-270m)
//
// Without them the test skips, so `go test ./...` on a bare machine passes.
package etcdinterop

import (
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	orcapb "github.com/cncf/xds/go/xds/data/orca/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/resolver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/health" // client-side health checking (healthCheckConfig)
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	modelwirev1 "github.com/modelwire/modelwire/client_stub/go/modelwirev1"
)

// round_robin over the resolver's addresses; healthCheckConfig makes the client leave a worker as soon as
// its health Watch says NOT_SERVING (the worker says so the moment it starts draining).
const serviceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "healthCheckConfig": {"serviceName": "modelwire.v1.ModelWorker"}
}`

type worker struct {
	pid  int
	addr string
}

func env(t *testing.T) (endpoints []string, target string, workers []worker, model string) {
	t.Helper()
	raw := os.Getenv("MODELWIRE_ETCD_ENDPOINTS")
	if raw == "" {
		t.Skip("MODELWIRE_ETCD_ENDPOINTS is not set; tests/test_etcd_registry.py starts etcd and two workers and sets it")
	}
	for _, item := range strings.Split(os.Getenv("MODELWIRE_WORKERS"), ",") {
		pid, addr, ok := strings.Cut(item, "@")
		n, err := strconv.Atoi(pid)
		if !ok || err != nil {
			t.Fatalf("MODELWIRE_WORKERS item %q is not pid@host:port", item)
		}
		workers = append(workers, worker{n, addr})
	}
	if len(workers) != 2 {
		t.Fatalf("want two workers, got %d", len(workers))
	}
	return strings.Split(raw, ","), os.Getenv("MODELWIRE_ETCD_TARGET"), workers, os.Getenv("MODELWIRE_MODEL")
}

type answer struct {
	instance string                 // the modelwire-instance-id trailer
	addr     string                 // the peer the call went to
	load     *orcapb.OrcaLoadReport // the endpoint-load-metrics-bin trailer (what weighted_round_robin reads)
}

func call(ctx context.Context, client modelwirev1.ModelWorkerClient, model string) (answer, error) {
	var trailer metadata.MD
	var p peer.Peer
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := client.CountToken(ctx, &modelwirev1.CountTokenRequest{Model: model, Prompt: "one two three"},
		grpc.Trailer(&trailer), grpc.Peer(&p))
	if err != nil {
		return answer{}, err
	}
	got := answer{addr: p.Addr.String()}
	if ids := trailer.Get("modelwire-instance-id"); len(ids) == 1 {
		got.instance = ids[0]
	}
	if reports := trailer.Get("endpoint-load-metrics-bin"); len(reports) == 1 {
		got.load = &orcapb.OrcaLoadReport{}
		if err := proto.Unmarshal([]byte(reports[0]), got.load); err != nil {
			return got, err
		}
	}
	return got, nil
}

func TestEtcdResolverRoundRobinsAndLeavesADrainingWorker(t *testing.T) {
	endpoints, target, workers, model := env(t)
	ctx := context.Background()

	etcd, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	defer etcd.Close()
	builder, err := resolver.NewBuilder(etcd)
	if err != nil {
		t.Fatalf("resolver: %v", err)
	}
	conn, err := grpc.NewClient("etcd:///"+target,
		grpc.WithResolvers(builder),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(serviceConfig))
	if err != nil {
		t.Fatalf("dial etcd:///%s: %v", target, err)
	}
	defer conn.Close()
	client := modelwirev1.NewModelWorkerClient(conn)

	// Both workers answer, in turn, once both are connected.
	deadline := time.Now().Add(30 * time.Second)
	byAddr := map[string]string{} // peer address -> instance id
	for len(byAddr) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("saw only %v within 30s; want both workers", byAddr)
		}
		got, err := call(ctx, client, model)
		if err != nil {
			t.Fatalf("call: %v", err)
		}
		if got.instance == "" {
			t.Fatal("no modelwire-instance-id trailer in the response")
		}
		if got.load == nil || got.load.GetNamedMetrics()["capacity"] < 1 {
			t.Fatalf("no ORCA load report (endpoint-load-metrics-bin) in the response: %v", got.load)
		}
		byAddr[got.addr] = got.instance
	}
	counts := map[string]int{}
	for i := 0; i < 40; i++ {
		got, err := call(ctx, client, model)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		counts[got.instance]++
	}
	for addr, id := range byAddr {
		if counts[id] != 20 {
			t.Fatalf("round robin: %v calls per instance (%s at %s has %d), want 20 each", counts, id, addr, counts[id])
		}
	}
	t.Logf("round robin over %v: %v", byAddr, counts)

	// SIGTERM one worker while calling without pause: no call fails, and calls stop going to it.
	victim, survivor := workers[0], workers[1]
	if err := syscall.Kill(victim.pid, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %d: %v", victim.pid, err)
	}
	sent, toVictim, streak := 0, 0, 0
	deadline = time.Now().Add(30 * time.Second)
	for streak < 50 {
		if time.Now().After(deadline) {
			t.Fatalf("after SIGTERM, calls still reach %s (%d of %d sent)", victim.addr, toVictim, sent)
		}
		got, err := call(ctx, client, model)
		if err != nil {
			t.Fatalf("call %d after SIGTERM failed: %v", sent, err)
		}
		sent++
		if got.addr == victim.addr {
			toVictim++
			streak = 0
			continue
		}
		if got.addr != survivor.addr {
			t.Fatalf("call went to %s, neither worker", got.addr)
		}
		streak++
	}
	t.Logf("after SIGTERM: %d calls, %d still reached the draining worker, none failed", sent, toVictim)
}
