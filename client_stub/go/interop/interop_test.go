// Package interop calls a live modelwire worker through the generated Go stubs.
//
// The tests need a running worker: `make interop` starts one on a free port and sets
// MODELWIRE_ADDR (and MODELWIRE_INTEROP_REQUIRED=1, which turns a missing address into a failure).
// Without MODELWIRE_ADDR the tests skip, so `go test ./...` on a machine without a worker still passes.
// MODELWIRE_MODEL names the model to call (default gemma-3-270m, the worker's embedded default).
// MODELWIRE_CA_FILE turns on TLS (the CA that signed the server's certificate) and MODELWIRE_TOKEN
// sends a bearer token on every call: `make interop` runs the tests a second time that way, through
// a TLS and auth gateway in front of a TLS and auth worker.
package interop

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	modelwirev1 "github.com/modelwire/modelwire/client_stub/go/modelwirev1"
)

const (
	prompt       = "Write one sentence about the sea."
	maxNewTokens = 16
	callTimeout  = 60 * time.Second
)

func model() string {
	if m := os.Getenv("MODELWIRE_MODEL"); m != "" {
		return m
	}
	return "gemma-3-270m"
}

// client dials MODELWIRE_ADDR; the connection is closed when the test ends.
func client(t *testing.T) modelwirev1.ModelWorkerClient {
	t.Helper()
	addr := os.Getenv("MODELWIRE_ADDR")
	if addr == "" {
		if os.Getenv("MODELWIRE_INTEROP_REQUIRED") != "" {
			t.Fatal("MODELWIRE_ADDR is not set but MODELWIRE_INTEROP_REQUIRED is")
		}
		t.Skip("MODELWIRE_ADDR is not set; `make interop` starts a worker and sets it")
	}
	transport := insecure.NewCredentials()
	if ca := os.Getenv("MODELWIRE_CA_FILE"); ca != "" {
		tls, err := credentials.NewClientTLSFromFile(ca, "")
		if err != nil {
			t.Fatalf("TLS with %s: %v", ca, err)
		}
		transport = tls
	}
	options := []grpc.DialOption{grpc.WithTransportCredentials(transport)}
	if token := os.Getenv("MODELWIRE_TOKEN"); token != "" {
		options = append(options, grpc.WithPerRPCCredentials(bearer(token)))
	}
	conn, err := grpc.NewClient(addr, options...)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return modelwirev1.NewModelWorkerClient(conn)
}

// bearer sends `authorization: Bearer <token>` with every call, over TLS only.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

func callContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

// greedyRequest asks for at most maxNewTokens tokens at temperature 0, which is deterministic.
func greedyRequest(modelName string, maxTokens int32) *modelwirev1.ModelRequest {
	return &modelwirev1.ModelRequest{
		Model:    modelName,
		Messages: []*modelwirev1.ModelMessage{{Role: modelwirev1.Role_ROLE_USER, Content: prompt}},
		Sampling: &modelwirev1.SamplingParams{
			Temperature:  proto.Float32(0),
			MaxNewTokens: proto.Int32(maxTokens),
		},
		Context: &modelwirev1.RequestContext{RequestId: "go-interop-" + modelName},
	}
}

// checkUsage: usage is set, counts are positive, at most maxCompletion tokens were generated, and the total adds up.
func checkUsage(t *testing.T, usage *modelwirev1.Usage, maxCompletion int32) {
	t.Helper()
	if usage == nil {
		t.Fatal("usage is not set")
	}
	if usage.GetPromptTokens() <= 0 {
		t.Errorf("usage.prompt_tokens = %d, want > 0", usage.GetPromptTokens())
	}
	if c := usage.GetCompletionTokens(); c <= 0 || c > maxCompletion {
		t.Errorf("usage.completion_tokens = %d, want in [1, %d]", c, maxCompletion)
	}
	if usage.GetTotalTokens() != usage.GetPromptTokens()+usage.GetCompletionTokens() {
		t.Errorf("usage.total_tokens = %d, want prompt %d + completion %d",
			usage.GetTotalTokens(), usage.GetPromptTokens(), usage.GetCompletionTokens())
	}
}

func checkFinishReason(t *testing.T, output *modelwirev1.ModelOutput) {
	t.Helper()
	switch reason := output.GetFinishReason(); reason {
	case modelwirev1.FinishReason_FINISH_REASON_STOP:
	case modelwirev1.FinishReason_FINISH_REASON_LENGTH:
		if got := output.GetUsage().GetCompletionTokens(); got != maxNewTokens {
			t.Errorf("finish_reason LENGTH with completion_tokens = %d, want max_new_tokens %d", got, maxNewTokens)
		}
	default:
		t.Errorf("finish_reason = %s, want STOP or LENGTH", reason)
	}
}

func TestListModels(t *testing.T) {
	c := client(t)
	response, err := c.ListModels(callContext(t), &modelwirev1.ListModelsRequest{})
	if err != nil {
		t.Fatalf("ListModels: %v", err)
	}
	var found *modelwirev1.ModelMetadata
	for _, m := range response.GetModels() {
		if m.GetModel() == model() {
			found = m
		}
	}
	if found == nil {
		t.Fatalf("ListModels = %v, want %q among them", response.GetModels(), model())
	}
	if found.GetProvider() == "" || found.GetContextLength() <= 0 || found.GetMaxOutputTokens() <= 0 {
		t.Errorf("incomplete metadata: %v", found)
	}
	streaming := false
	for _, capability := range found.GetCapabilities() {
		streaming = streaming || capability == modelwirev1.Capability_CAPABILITY_STREAMING
	}
	if !streaming {
		t.Errorf("capabilities = %v, want CAPABILITY_STREAMING", found.GetCapabilities())
	}
}

func TestGenerate(t *testing.T) {
	c := client(t)
	output, err := c.Generate(callContext(t), greedyRequest(model(), maxNewTokens))
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	if output.GetText() == "" {
		t.Error("Generate returned empty text")
	}
	if output.GetModel() != model() {
		t.Errorf("model = %q, want %q", output.GetModel(), model())
	}
	checkUsage(t, output.GetUsage(), maxNewTokens)
	checkFinishReason(t, output)
	if output.GetTiming() == nil || output.GetTiming().GetTotalSeconds() <= 0 {
		t.Errorf("timing = %v, want total_seconds > 0", output.GetTiming())
	}
}

// TestGenerateStream collects the deltas and compares them with the unary call of the same greedy request.
func TestGenerateStream(t *testing.T) {
	c := client(t)
	ctx := callContext(t)
	unary, err := c.Generate(ctx, greedyRequest(model(), maxNewTokens))
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	responses, err := c.GenerateStream(ctx, greedyRequest(model(), maxNewTokens))
	if err != nil {
		t.Fatalf("GenerateStream: %v", err)
	}
	var chunks []*modelwirev1.ModelOutput
	for {
		chunk, err := responses.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("GenerateStream after %d chunks: %v", len(chunks), err)
		}
		chunks = append(chunks, chunk)
	}
	if len(chunks) < 2 {
		t.Fatalf("got %d stream messages, want deltas and a final message", len(chunks))
	}
	var text strings.Builder
	deltas := 0
	for i, chunk := range chunks {
		text.WriteString(chunk.GetText())
		if chunk.GetText() != "" {
			deltas++
		}
		if i < len(chunks)-1 && (chunk.GetFinishReason() != modelwirev1.FinishReason_FINISH_REASON_UNSPECIFIED || chunk.GetUsage() != nil) {
			t.Errorf("message %d of %d carries finish_reason %s / usage %v; only the last may", i, len(chunks), chunk.GetFinishReason(), chunk.GetUsage())
		}
	}
	last := chunks[len(chunks)-1]
	checkFinishReason(t, last)
	checkUsage(t, last.GetUsage(), maxNewTokens)
	if text.Len() == 0 {
		t.Fatal("the stream's deltas are empty")
	}
	if text.String() != unary.GetText() {
		t.Errorf("stream text %q != Generate text %q for the same greedy request", text.String(), unary.GetText())
	}
	if int32(deltas) > last.GetUsage().GetCompletionTokens() {
		t.Errorf("%d non-empty deltas but usage.completion_tokens = %d", deltas, last.GetUsage().GetCompletionTokens())
	}
	if !proto.Equal(
		&modelwirev1.Usage{PromptTokens: last.GetUsage().GetPromptTokens(), CompletionTokens: last.GetUsage().GetCompletionTokens()},
		&modelwirev1.Usage{PromptTokens: unary.GetUsage().GetPromptTokens(), CompletionTokens: unary.GetUsage().GetCompletionTokens()},
	) {
		t.Errorf("stream usage %v != Generate usage %v", last.GetUsage(), unary.GetUsage())
	}
	if last.GetFinishReason() != unary.GetFinishReason() {
		t.Errorf("stream finish_reason %s != Generate finish_reason %s", last.GetFinishReason(), unary.GetFinishReason())
	}
}

func TestCountToken(t *testing.T) {
	c := client(t)
	ctx := callContext(t)
	counted, err := c.CountToken(ctx, &modelwirev1.CountTokenRequest{Model: model(), Prompt: prompt})
	if err != nil {
		t.Fatalf("CountToken(prompt): %v", err)
	}
	if counted.GetCount() <= 0 || counted.GetTokenizer() == "" {
		t.Errorf("CountToken(prompt) = %v, want count > 0 and a tokenizer", counted)
	}
	// Counting the chat messages must agree with the prompt tokens the model saw when it generated.
	request := greedyRequest(model(), maxNewTokens)
	messages, err := c.CountToken(ctx, &modelwirev1.CountTokenRequest{Model: model(), Messages: request.GetMessages()})
	if err != nil {
		t.Fatalf("CountToken(messages): %v", err)
	}
	if !messages.GetExact() {
		t.Logf("tokenizer %s is an estimate; no prompt-token cross-check", messages.GetTokenizer())
		return
	}
	output, err := c.Generate(ctx, request)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	if messages.GetCount() != output.GetUsage().GetPromptTokens() {
		t.Errorf("CountToken(messages) = %d, Generate usage.prompt_tokens = %d", messages.GetCount(), output.GetUsage().GetPromptTokens())
	}
}

func TestUnknownModelIsNotFound(t *testing.T) {
	c := client(t)
	_, err := c.Generate(callContext(t), greedyRequest("no-such-model", maxNewTokens))
	st := status.Convert(err)
	if st.Code() != codes.NotFound {
		t.Fatalf("Generate(no-such-model) = %v, want NOT_FOUND", err)
	}
	if !strings.Contains(st.Message(), model()) || !strings.Contains(st.Message(), "no-such-model") {
		t.Errorf("NOT_FOUND message %q should name the unknown model and the served %q", st.Message(), model())
	}
}

func TestInvalidArgumentHasBadRequest(t *testing.T) {
	c := client(t)
	request := greedyRequest(model(), maxNewTokens)
	request.Sampling.Temperature = proto.Float32(5)
	_, err := c.Generate(callContext(t), request)
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("Generate(temperature=5) = %v, want INVALID_ARGUMENT", err)
	}
	for _, detail := range st.Details() {
		if badRequest, ok := detail.(*errdetails.BadRequest); ok {
			for _, violation := range badRequest.GetFieldViolations() {
				if violation.GetField() == "sampling.temperature" {
					return
				}
			}
		}
	}
	t.Errorf("INVALID_ARGUMENT details %v lack a google.rpc.BadRequest violation of sampling.temperature", st.Details())
}

func TestDeadlineExceeded(t *testing.T) {
	c := client(t)
	// Connect first, so the 1 ms deadline covers the call and not the dial.
	if _, err := c.ListModels(callContext(t), &modelwirev1.ListModelsRequest{}); err != nil {
		t.Fatalf("ListModels: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	_, err := c.Generate(ctx, greedyRequest(model(), maxNewTokens))
	if code := status.Code(err); code != codes.DeadlineExceeded {
		t.Fatalf("Generate with a 1 ms deadline = %v, want DEADLINE_EXCEEDED", err)
	}

	ctx, cancel = context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	responses, err := c.GenerateStream(ctx, greedyRequest(model(), maxNewTokens))
	if err == nil {
		for err == nil {
			_, err = responses.Recv()
		}
	}
	if code := status.Code(err); code != codes.DeadlineExceeded {
		t.Fatalf("GenerateStream with a 1 ms deadline = %v, want DEADLINE_EXCEEDED", err)
	}
}

// TestCancelStream cancels a stream after its first chunk; the worker must stay usable.
func TestCancelStream(t *testing.T) {
	c := client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	responses, err := c.GenerateStream(ctx, greedyRequest(model(), 256))
	if err != nil {
		t.Fatalf("GenerateStream: %v", err)
	}
	first, err := responses.Recv()
	if err != nil {
		t.Fatalf("first chunk: %v", err)
	}
	if first.GetFinishReason() != modelwirev1.FinishReason_FINISH_REASON_UNSPECIFIED {
		t.Fatalf("the first of up to 256 tokens already finished (%s); nothing left to cancel", first.GetFinishReason())
	}
	cancel()
	for err == nil {
		_, err = responses.Recv()
	}
	if code := status.Code(err); code != codes.Canceled {
		t.Fatalf("Recv after cancel = %v, want CANCELED", err)
	}

	// The cancelled generation must not hold the model: the next call succeeds promptly.
	next, cancelNext := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelNext()
	output, err := c.Generate(next, greedyRequest(model(), maxNewTokens))
	if err != nil {
		t.Fatalf("Generate after a cancelled stream: %v", err)
	}
	if output.GetText() == "" || output.GetFinishReason() == modelwirev1.FinishReason_FINISH_REASON_UNSPECIFIED {
		t.Errorf("Generate after a cancelled stream = %v", output)
	}
}
