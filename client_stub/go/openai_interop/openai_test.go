// Package openaiinterop calls a live modelwire worker's OpenAI facade (docs/api.md, "HTTP facades")
// through the official OpenAI Go SDK, github.com/openai/openai-go/v3: a unary chat completion, a
// streamed one accumulated with the SDK's ChatCompletionAccumulator, the models list, and the two
// errors an SDK caller branches on (an unknown model, an unsupported parameter) as *openai.Error.
//
// The tests need a running worker with its HTTP port: `make interop` starts one with --http-port
// and sets MODELWIRE_OPENAI_BASE_URL (http://HOST:PORT/v1) and MODELWIRE_INTEROP_REQUIRED=1, which
// turns a missing base URL into a failure. Without MODELWIRE_OPENAI_BASE_URL the tests skip, so
// `go test ./...` on a machine without a worker still passes. MODELWIRE_MODEL names the model to
// call (default gemma-3-270m, the worker's embedded default); MODELWIRE_TOKEN, when set, is the
// API key (the worker's bearer token), else a placeholder a worker without [auth] ignores.
//
// A module of its own, so that the SDK and its requirements stay out of the stubs' module, whose
// go.mod is what consumers of the stubs inherit.
package openaiinterop

import (
	"context"
	"errors"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

const (
	prompt      = "Write one sentence about the sea."
	maxTokens   = 16
	callTimeout = 60 * time.Second
)

func model() string {
	if m := os.Getenv("MODELWIRE_MODEL"); m != "" {
		return m
	}
	return "gemma-3-270m"
}

// client is the SDK's client on MODELWIRE_OPENAI_BASE_URL, without retries: the test sees the
// facade's first answer.
func client(t *testing.T) openai.Client {
	t.Helper()
	base := os.Getenv("MODELWIRE_OPENAI_BASE_URL")
	if base == "" {
		if os.Getenv("MODELWIRE_INTEROP_REQUIRED") != "" {
			t.Fatal("MODELWIRE_OPENAI_BASE_URL is not set but MODELWIRE_INTEROP_REQUIRED is")
		}
		t.Skip("MODELWIRE_OPENAI_BASE_URL is not set; `make interop` starts a worker and sets it")
	}
	key := os.Getenv("MODELWIRE_TOKEN")
	if key == "" {
		key = "unused"
	}
	return openai.NewClient(
		option.WithBaseURL(base),
		option.WithAPIKey(key),
		option.WithMaxRetries(0),
		option.WithRequestTimeout(callTimeout),
	)
}

func callContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

func params() openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:       model(),
		Messages:    []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
		MaxTokens:   openai.Int(maxTokens),
		Temperature: openai.Float(0),
	}
}

// checkCompletion checks one choice with text, a finish reason and consistent usage.
func checkCompletion(t *testing.T, how string, completion *openai.ChatCompletion) {
	t.Helper()
	if completion.ID == "" || completion.Model == "" {
		t.Errorf("%s: no id or no model: id %q, model %q", how, completion.ID, completion.Model)
	}
	if len(completion.Choices) != 1 {
		t.Fatalf("%s: %d choices, want 1", how, len(completion.Choices))
	}
	choice := completion.Choices[0]
	if choice.Message.Content == "" {
		t.Errorf("%s: no text", how)
	}
	if choice.Message.Role != "assistant" {
		t.Errorf("%s: role %q, want assistant", how, choice.Message.Role)
	}
	usage := completion.Usage
	switch choice.FinishReason {
	case "stop":
	case "length":
		if usage.CompletionTokens != maxTokens {
			t.Errorf("%s: finish_reason length with %d completion tokens, max_tokens %d", how, usage.CompletionTokens, maxTokens)
		}
	default:
		t.Errorf("%s: finish_reason %q, want stop or length", how, choice.FinishReason)
	}
	if usage.PromptTokens <= 0 || usage.CompletionTokens <= 0 || usage.CompletionTokens > maxTokens ||
		usage.TotalTokens != usage.PromptTokens+usage.CompletionTokens {
		t.Errorf("%s: usage %+v", how, usage)
	}
}

func TestChatCompletionUnaryAndStream(t *testing.T) {
	c := client(t)
	unary, err := c.Chat.Completions.New(callContext(t), params())
	if err != nil {
		t.Fatalf("Chat.Completions.New: %v", err)
	}
	checkCompletion(t, "unary", unary)
	t.Logf("unary: %q, finish_reason %s, usage %d+%d", unary.Choices[0].Message.Content,
		unary.Choices[0].FinishReason, unary.Usage.PromptTokens, unary.Usage.CompletionTokens)

	streamParams := params()
	streamParams.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := c.Chat.Completions.NewStreaming(callContext(t), streamParams)
	defer stream.Close()
	var acc openai.ChatCompletionAccumulator
	chunks, usageChunks := 0, 0
	for stream.Next() {
		chunk := stream.Current()
		chunks++
		if !acc.AddChunk(chunk) {
			t.Fatalf("the accumulator refused chunk %d: %s", chunks, chunk.RawJSON())
		}
		if chunk.JSON.Usage.Valid() && chunk.Usage.TotalTokens > 0 {
			usageChunks++
			if len(chunk.Choices) != 0 {
				t.Errorf("the usage chunk has %d choices, want 0 (include_usage)", len(chunk.Choices))
			}
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("stream after %d chunks: %v", chunks, err)
	}
	if usageChunks != 1 {
		t.Errorf("%d chunks carried usage, want 1", usageChunks)
	}
	checkCompletion(t, "stream", &acc.ChatCompletion)
	if t.Failed() {
		return
	}
	// Greedy decoding: the stream says what the unary call said.
	got, want := acc.Choices[0], unary.Choices[0]
	if got.Message.Content != want.Message.Content || got.FinishReason != want.FinishReason {
		t.Errorf("stream: %q (%s), unary: %q (%s)", got.Message.Content, got.FinishReason,
			want.Message.Content, want.FinishReason)
	}
	if acc.Usage.PromptTokens != unary.Usage.PromptTokens || acc.Usage.CompletionTokens != unary.Usage.CompletionTokens {
		t.Errorf("stream usage %+v, unary usage %+v", acc.Usage, unary.Usage)
	}
	t.Logf("stream: %d chunks accumulated to the unary text, usage %d+%d", chunks,
		acc.Usage.PromptTokens, acc.Usage.CompletionTokens)
}

func TestModelsList(t *testing.T) {
	c := client(t)
	var ids []string
	pages := c.Models.ListAutoPaging(callContext(t))
	for pages.Next() {
		m := pages.Current()
		if m.Object != "model" {
			t.Errorf("model %q: object %q, want model", m.ID, m.Object)
		}
		ids = append(ids, m.ID)
	}
	if err := pages.Err(); err != nil {
		t.Fatalf("Models.ListAutoPaging: %v", err)
	}
	if !slices.Contains(ids, model()) {
		t.Fatalf("models %v lack %s", ids, model())
	}
	t.Logf("models: %v", ids)
}

// apiError is err as the SDK's *openai.Error with the given status.
func apiError(t *testing.T, err error, status int) *openai.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("succeeded, want an HTTP %d", status)
	}
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) {
		t.Fatalf("%T %v, want *openai.Error", err, err)
	}
	if apiErr.StatusCode != status {
		t.Fatalf("status %d (%v), want %d", apiErr.StatusCode, err, status)
	}
	if apiErr.Message == "" {
		t.Errorf("no message: %s", apiErr.RawJSON())
	}
	return apiErr
}

func TestUnknownModelIs404(t *testing.T) {
	p := params()
	p.Model = "no-such-model"
	c := client(t)
	_, err := c.Chat.Completions.New(callContext(t), p)
	apiErr := apiError(t, err, http.StatusNotFound)
	if apiErr.Type != "not_found_error" {
		t.Errorf("type %q, want not_found_error", apiErr.Type)
	}
	if !strings.Contains(apiErr.Message, model()) {
		t.Errorf("the message does not name the served model %s: %q", model(), apiErr.Message)
	}
	t.Logf("unknown model: %d %s: %s", apiErr.StatusCode, apiErr.Type, apiErr.Message)
}

func TestUnsupportedParameterIs400(t *testing.T) {
	p := params()
	p.N = openai.Int(2)
	c := client(t)
	_, err := c.Chat.Completions.New(callContext(t), p)
	apiErr := apiError(t, err, http.StatusBadRequest)
	if apiErr.Param != "n" || apiErr.Type != "invalid_request_error" {
		t.Errorf("param %q, type %q; want n, invalid_request_error", apiErr.Param, apiErr.Type)
	}
	t.Logf("n=2: %d %s, param %s: %s", apiErr.StatusCode, apiErr.Type, apiErr.Param, apiErr.Message)
}
