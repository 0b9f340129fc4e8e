// Command pacedload holds N concurrent paced streams open against a modelwire worker (gRPC
// GenerateStream) or an OpenAI-compatible HTTP server (POST /v1/chat/completions, SSE), both in
// front of bench/instant_upstream.py --pace R, and measures what the path in between adds to the
// gap between consecutive tokens. It is Go because Python on two cores cannot read 2,000 streams
// × 20 tokens/s without becoming the thing measured.
//
//	pacedload -proto grpc -addr 127.0.0.1:5000 -streams 1000 -tokens 200 [-ramp 3s] [-warmup 2s]
//	          [-window 10s] [-conns 4] [-model gpt-4o]
//	pacedload -proto http -addr http://127.0.0.1:4000 ...
//
// Each of the N slots starts within the ramp and runs streams back to back, each asking for T
// tokens (max_new_tokens, max_tokens); a slot's first stream asks for a share of T in proportion
// to its place (slot i of N: T·(i+1)/N), so streams end, and new ones start, spread evenly over
// time rather than in waves. The upstream stamps every token with its wall-clock send time; over
// the window (after ramp and warm-up) this records each token whose message arrived in it, and
// per consecutive pair of tokens of one stream the gap at the caller minus the gap at the
// upstream. Prints "window start" and "window end" on stderr as they pass (bench/paced.py reads
// the servers' CPU there) and one JSON document on stdout at the end.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	modelwirev1 "github.com/modelwire/modelwire/client_stub/go/modelwirev1"
)

type options struct {
	proto, addr, model     string
	streams, tokens, conns int
	ramp, warmup, window   time.Duration
}

// opener runs one stream to its end, feeding every message to `s`; it reports whether the last
// message said the stream finished.
type opener func(ctx context.Context, tokens int, s *stream, r *recorder) (finished bool, err error)

func main() {
	var o options
	flag.StringVar(&o.proto, "proto", "grpc", "grpc (modelwire GenerateStream) or http (OpenAI SSE)")
	flag.StringVar(&o.addr, "addr", "", "HOST:PORT for grpc, http://HOST:PORT for http")
	flag.StringVar(&o.model, "model", "gpt-4o", "model name")
	flag.IntVar(&o.streams, "streams", 500, "concurrent streams")
	flag.IntVar(&o.tokens, "tokens", 200, "tokens each stream asks for")
	flag.IntVar(&o.conns, "conns", 4, "gRPC connections the streams share")
	flag.DurationVar(&o.ramp, "ramp", 3*time.Second, "time over which the streams are opened")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "time after the ramp before the window")
	flag.DurationVar(&o.window, "window", 10*time.Second, "the measured time")
	flag.Parse()
	if o.addr == "" || o.streams < 1 || o.tokens < 1 || o.conns < 1 {
		flag.Usage()
		os.Exit(2)
	}
	open, closeAll, err := newOpener(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pacedload:", err)
		os.Exit(1)
	}
	defer closeAll()
	out := run(o, open)
	json.NewEncoder(os.Stdout).Encode(out)
}

func newOpener(o options) (opener, func(), error) {
	switch o.proto {
	case "grpc":
		clients := make([]modelwirev1.ModelWorkerClient, o.conns)
		conns := make([]*grpc.ClientConn, o.conns)
		for i := range conns {
			// One ClientConn per connection: each has its own HTTP/2 transport.
			conn, err := grpc.NewClient(o.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return nil, nil, err
			}
			conns[i], clients[i] = conn, modelwirev1.NewModelWorkerClient(conn)
		}
		var next atomic.Uint64
		open := func(ctx context.Context, tokens int, s *stream, r *recorder) (bool, error) {
			client := clients[next.Add(1)%uint64(len(clients))]
			return grpcStream(ctx, client, o.model, tokens, s, r)
		}
		return open, func() {
			for _, conn := range conns {
				conn.Close()
			}
		}, nil
	case "http":
		client := &http.Client{Transport: &http.Transport{
			MaxIdleConnsPerHost: o.streams + 16,
			DisableCompression:  true,
		}}
		url := strings.TrimRight(o.addr, "/") + "/v1/chat/completions"
		open := func(ctx context.Context, tokens int, s *stream, r *recorder) (bool, error) {
			return httpStream(ctx, client, url, o.model, tokens, s, r)
		}
		return open, client.CloseIdleConnections, nil
	}
	return nil, nil, fmt.Errorf("-proto is grpc or http, not %q", o.proto)
}

func grpcStream(ctx context.Context, client modelwirev1.ModelWorkerClient, model string, tokens int, s *stream, r *recorder) (bool, error) {
	budget := int32(tokens)
	call, err := client.GenerateStream(ctx, &modelwirev1.ModelRequest{
		Model:    model,
		Messages: []*modelwirev1.ModelMessage{{Role: modelwirev1.Role_ROLE_USER, Content: "hi"}},
		Sampling: &modelwirev1.SamplingParams{MaxNewTokens: &budget},
	})
	if err != nil {
		return false, err
	}
	finished := false
	for {
		message, err := call.Recv()
		if errors.Is(err, io.EOF) {
			return finished, nil
		}
		if err != nil {
			return false, err
		}
		arrival := time.Now().UnixNano()
		if message.Text != "" {
			if err := s.feed(message.Text, arrival, r); err != nil {
				return false, err
			}
		}
		finished = message.FinishReason != modelwirev1.FinishReason_FINISH_REASON_UNSPECIFIED
	}
}

type sseChunk struct {
	Choices []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
}

func httpStream(ctx context.Context, client *http.Client, url, model string, tokens int, s *stream, r *recorder) (bool, error) {
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}],"stream":true,`+
		`"stream_options":{"include_usage":true},"max_tokens":%d}`, model, tokens)
	request, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return false, err
	}
	request.Header.Set("content-type", "application/json")
	request.Header.Set("authorization", "Bearer dummy")
	response, err := client.Do(request)
	if err != nil {
		return false, err
	}
	defer response.Body.Close()
	if response.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(response.Body, 1<<16))
		return false, fmt.Errorf("HTTP %d", response.StatusCode)
	}
	reader := bufio.NewReaderSize(response.Body, 64<<10)
	finished := false
	for {
		line, err := reader.ReadBytes('\n')
		if len(line) > 0 {
			arrival := time.Now().UnixNano()
			payload, isData := bytes.CutPrefix(bytes.TrimSpace(line), []byte("data: "))
			if isData && string(payload) == "[DONE]" {
				io.Copy(io.Discard, reader)
				return finished, nil
			}
			if isData {
				var chunk sseChunk
				if err := json.Unmarshal(payload, &chunk); err != nil {
					return false, fmt.Errorf("SSE event not JSON: %w", err)
				}
				for _, choice := range chunk.Choices {
					if choice.Delta.Content != "" {
						if err := s.feed(choice.Delta.Content, arrival, r); err != nil {
							return false, err
						}
					}
					if choice.FinishReason != nil {
						finished = true
					}
				}
			}
		}
		if errors.Is(err, io.EOF) {
			return false, errors.New("stream ended without [DONE]")
		}
		if err != nil {
			return false, err
		}
	}
}

// errorKind names a failure for the report: the gRPC status code, or the error's text.
func errorKind(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Code().String()
	}
	return err.Error()
}

func run(o options, open opener) map[string]any {
	started := time.Now()
	w := window{
		start: started.Add(o.ramp + o.warmup).UnixNano(),
		end:   started.Add(o.ramp + o.warmup + o.window).UnixNano(),
	}
	ctx, cancel := context.WithCancel(context.Background())
	recorders := make([]*recorder, o.streams)
	var openNow, streamsStarted atomic.Int64
	var group sync.WaitGroup
	for i := range recorders {
		r := newRecorder(w)
		recorders[i] = r
		delay := time.Duration(int64(o.ramp) * int64(i) / int64(o.streams))
		first := max(1, o.tokens*(i+1)/o.streams)
		group.Add(1)
		go func() {
			defer group.Done()
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return
			}
			for tokens := first; ctx.Err() == nil; tokens = o.tokens {
				streamsStarted.Add(1)
				openNow.Add(1)
				s := &stream{started: time.Now().UnixNano()}
				finished, err := open(ctx, tokens, s, r)
				openNow.Add(-1)
				if ctx.Err() != nil {
					return // the run's end cut it off
				}
				at := time.Now().UnixNano()
				switch {
				case err != nil:
					r.fail(at, errorKind(err))
				case !finished || s.tokens != tokens || s.carry != "":
					r.fail(at, fmt.Sprintf("short stream: %d of %d tokens", s.tokens, tokens))
				case w.holds(at):
					r.completed++
				}
				if err != nil {
					// A failing server is not hammered in a tight loop.
					select {
					case <-time.After(100 * time.Millisecond):
					case <-ctx.Done():
						return
					}
				}
			}
		}()
	}
	time.Sleep(time.Until(time.Unix(0, w.start)))
	openAtStart := openNow.Load()
	fmt.Fprintln(os.Stderr, "window start")
	time.Sleep(time.Until(time.Unix(0, w.end)))
	openAtEnd := openNow.Load()
	fmt.Fprintln(os.Stderr, "window end")
	cancel()
	group.Wait()

	total := newRecorder(w)
	for _, r := range recorders {
		total.merge(r)
	}
	errorCount := 0
	for _, count := range total.errors {
		errorCount += count
	}
	seconds := o.window.Seconds()
	return map[string]any{
		"proto":                        o.proto,
		"streams":                      o.streams,
		"tokens_per_stream":            o.tokens,
		"ramp_s":                       o.ramp.Seconds(),
		"warmup_s":                     o.warmup.Seconds(),
		"window_s":                     seconds,
		"open_at_window_start":         openAtStart,
		"open_at_window_end":           openAtEnd,
		"streams_started":              streamsStarted.Load(),
		"streams_completed":            total.completed,
		"tokens":                       total.tokens,
		"tokens_per_s":                 float64(total.tokens) / seconds,
		"messages":                     total.messages,
		"messages_with_several_tokens": total.multi,
		"gaps":                         len(total.added),
		"added_gap_ms":                 percentilesMs(total.added, map[string]float64{"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999, "max": 1}),
		"lateness_ms":                  percentilesMs(total.lateness, map[string]float64{"p50": 0.5, "p99": 0.99, "max": 1}),
		"upstream_gap_ms":              percentilesMs(total.upstreamGaps, map[string]float64{"p50": 0.5, "p99": 0.99}),
		"first_token_ms":               percentilesMs(total.firstTokens, map[string]float64{"p50": 0.5, "p99": 0.99, "max": 1}),
		"errors":                       errorCount,
		"error_kinds":                  total.errors,
		"errors_before_window":         total.errorsBefore,
	}
}
