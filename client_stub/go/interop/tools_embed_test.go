package interop

// The contract v1.1 cases: a forced tool call (unary and streamed), Embed, and the refusal of a
// field the model cannot honour (an image to a model without CAPABILITY_VISION).

import (
	"bytes"
	"encoding/json"
	"errors"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	modelwirev1 "github.com/modelwire/modelwire/client_stub/go/modelwirev1"
)

const (
	toolName = "get_weather"
	// Two required keys, one of them an enum, so that a small model's constrained output ends soon.
	toolSchema = `{"type": "object", "properties": {` +
		`"city": {"type": "string", "description": "The city, for example Paris"}, ` +
		`"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ` +
		`"required": ["city", "unit"]}`
	toolPrompt       = "What is the weather in Paris, in celsius?"
	toolMaxNewTokens = 64
)

// toolRequest forces a call of toolName (tool_choice.tool_name) at temperature 0.
func toolRequest(modelName string) *modelwirev1.ModelRequest {
	return &modelwirev1.ModelRequest{
		Model:    modelName,
		Messages: []*modelwirev1.ModelMessage{{Role: modelwirev1.Role_ROLE_USER, Content: toolPrompt}},
		Sampling: &modelwirev1.SamplingParams{
			Temperature:  proto.Float32(0),
			MaxNewTokens: proto.Int32(toolMaxNewTokens),
		},
		Tools: []*modelwirev1.Tool{{
			Name:                 toolName,
			Description:          "The current weather in a city.",
			ParametersJsonSchema: toolSchema,
		}},
		ToolChoice: &modelwirev1.ToolChoice{Choice: &modelwirev1.ToolChoice_ToolName{ToolName: toolName}},
		Context:    &modelwirev1.RequestContext{RequestId: "go-interop-tool-" + modelName},
	}
}

// checkToolArguments fails unless arguments is a JSON object with the schema's required keys and types.
func checkToolArguments(t *testing.T, arguments string) {
	t.Helper()
	var args map[string]any
	if err := json.Unmarshal([]byte(arguments), &args); err != nil {
		t.Fatalf("tool call arguments %q are not a JSON object: %v", arguments, err)
	}
	if city, ok := args["city"].(string); !ok {
		t.Errorf("arguments %s: city = %#v, want a string", arguments, args["city"])
	} else if city == "" {
		t.Logf("arguments %s: city is empty (the schema allows it)", arguments)
	}
	if unit, _ := args["unit"].(string); unit != "celsius" && unit != "fahrenheit" {
		t.Errorf("arguments %s: unit = %#v, want celsius or fahrenheit", arguments, args["unit"])
	}
}

func TestGenerateForcedTool(t *testing.T) {
	c := client(t)
	output, err := c.Generate(callContext(t), toolRequest(model()))
	if err != nil {
		t.Fatalf("Generate with tool_choice.tool_name = %s: %v", toolName, err)
	}
	if output.GetFinishReason() != modelwirev1.FinishReason_FINISH_REASON_TOOL_CALLS {
		t.Errorf("finish_reason = %s, want TOOL_CALLS", output.GetFinishReason())
	}
	calls := output.GetToolCalls()
	if len(calls) != 1 {
		t.Fatalf("tool_calls = %v, want one call of %s", calls, toolName)
	}
	if calls[0].GetName() != toolName {
		t.Errorf("tool call name = %q, want %q", calls[0].GetName(), toolName)
	}
	if calls[0].GetId() == "" {
		t.Error("the tool call has no id (a ROLE_TOOL answer needs it as tool_call_id)")
	}
	checkToolArguments(t, calls[0].GetArgumentsJson())
	if output.GetText() != "" {
		t.Errorf("text = %q next to the forced tool call, want none", output.GetText())
	}
	if len(output.GetToolCallDeltas()) != 0 {
		t.Errorf("Generate carries tool_call_deltas %v; they are GenerateStream's", output.GetToolCallDeltas())
	}
	checkUsage(t, output.GetUsage(), toolMaxNewTokens)
	t.Logf("tool call %s(%s), id %q, %d completion tokens", calls[0].GetName(), calls[0].GetArgumentsJson(),
		calls[0].GetId(), output.GetUsage().GetCompletionTokens())
}

// TestGenerateStreamForcedTool concatenates the tool_call_deltas of the same forced call and compares
// the call with the unary one (temperature 0).
func TestGenerateStreamForcedTool(t *testing.T) {
	c := client(t)
	ctx := callContext(t)
	unary, err := c.Generate(ctx, toolRequest(model()))
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	responses, err := c.GenerateStream(ctx, toolRequest(model()))
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
	if len(chunks) == 0 {
		t.Fatal("the stream is empty")
	}
	type streamedCall struct {
		id, name  string
		arguments strings.Builder
		deltas    int
	}
	var streamed []*streamedCall
	for i, chunk := range chunks {
		if chunk.GetText() != "" {
			t.Errorf("message %d carries text %q next to the forced tool call", i, chunk.GetText())
		}
		if len(chunk.GetToolCalls()) != 0 {
			t.Errorf("message %d carries complete tool_calls %v; a stream sends tool_call_deltas", i, chunk.GetToolCalls())
		}
		if i < len(chunks)-1 && (chunk.GetFinishReason() != modelwirev1.FinishReason_FINISH_REASON_UNSPECIFIED || chunk.GetUsage() != nil) {
			t.Errorf("message %d of %d carries finish_reason %s / usage %v; only the last may", i, len(chunks), chunk.GetFinishReason(), chunk.GetUsage())
		}
		for _, delta := range chunk.GetToolCallDeltas() {
			index := int(delta.GetIndex())
			if index < 0 || index > len(streamed) {
				t.Fatalf("message %d: delta index %d, but %d calls so far (indexes count from 0)", i, index, len(streamed))
			}
			if index == len(streamed) {
				if delta.GetId() == "" || delta.GetName() == "" {
					t.Errorf("message %d: the first delta of call %d has id %q and name %q; it must carry both", i, index, delta.GetId(), delta.GetName())
				}
				streamed = append(streamed, &streamedCall{id: delta.GetId(), name: delta.GetName()})
			}
			call := streamed[index]
			call.arguments.WriteString(delta.GetArgumentsDelta())
			if delta.GetArgumentsDelta() != "" {
				call.deltas++
			}
		}
	}
	last := chunks[len(chunks)-1]
	if last.GetFinishReason() != modelwirev1.FinishReason_FINISH_REASON_TOOL_CALLS {
		t.Errorf("the last message's finish_reason = %s, want TOOL_CALLS", last.GetFinishReason())
	}
	checkUsage(t, last.GetUsage(), toolMaxNewTokens)
	if len(streamed) != 1 {
		t.Fatalf("the deltas make %d calls, want one call of %s", len(streamed), toolName)
	}
	call := streamed[0]
	if call.name != toolName {
		t.Errorf("streamed call name = %q, want %q", call.name, toolName)
	}
	arguments := call.arguments.String()
	checkToolArguments(t, arguments)
	if call.deltas < 2 {
		t.Errorf("the arguments came in %d delta(s); a stream sends them as they are generated", call.deltas)
	}
	if len(unary.GetToolCalls()) == 1 && arguments != unary.GetToolCalls()[0].GetArgumentsJson() {
		t.Errorf("streamed arguments %s != Generate arguments %s for the same greedy request", arguments, unary.GetToolCalls()[0].GetArgumentsJson())
	}
	if last.GetUsage().GetCompletionTokens() != unary.GetUsage().GetCompletionTokens() {
		t.Errorf("stream completion_tokens %d != Generate completion_tokens %d", last.GetUsage().GetCompletionTokens(), unary.GetUsage().GetCompletionTokens())
	}
	t.Logf("streamed call %s(%s) in %d argument deltas over %d messages", call.name, arguments, call.deltas, len(chunks))
}

// embedModel is MODELWIRE_EMBED_MODEL, else MODELWIRE_MODEL when it has CAPABILITY_EMBEDDINGS, else the
// first served model that has it.
func embedModel(t *testing.T, c modelwirev1.ModelWorkerClient) string {
	t.Helper()
	if m := os.Getenv("MODELWIRE_EMBED_MODEL"); m != "" {
		return m
	}
	response, err := c.ListModels(callContext(t), &modelwirev1.ListModelsRequest{})
	if err != nil {
		t.Fatalf("ListModels: %v", err)
	}
	var embedding []string
	for _, m := range response.GetModels() {
		if slices.Contains(m.GetCapabilities(), modelwirev1.Capability_CAPABILITY_EMBEDDINGS) {
			if m.GetModel() == model() {
				return m.GetModel()
			}
			embedding = append(embedding, m.GetModel())
		}
	}
	if len(embedding) == 0 {
		t.Fatalf("no served model has CAPABILITY_EMBEDDINGS: %v", response.GetModels())
	}
	return embedding[0]
}

func cosine(a, b []float32) float64 {
	var dot, na, nb float64
	for i := range a {
		dot += float64(a[i]) * float64(b[i])
		na += float64(a[i]) * float64(a[i])
		nb += float64(b[i]) * float64(b[i])
	}
	return dot / math.Sqrt(na*nb)
}

func TestEmbed(t *testing.T) {
	c := client(t)
	name := embedModel(t, c)
	inputs := []string{"The sea is calm this morning.", "A cat sleeps on the warm sofa."}
	request := &modelwirev1.EmbedRequest{Model: name, Inputs: inputs}
	response, err := c.Embed(callContext(t), request)
	if err != nil {
		t.Fatalf("Embed(%s): %v", name, err)
	}
	embeddings := response.GetEmbeddings()
	if len(embeddings) != len(inputs) {
		t.Fatalf("%d embeddings for %d inputs", len(embeddings), len(inputs))
	}
	dimension := len(embeddings[0].GetValues())
	if dimension == 0 {
		t.Fatal("the first embedding is empty")
	}
	for i, embedding := range embeddings {
		values := embedding.GetValues()
		if len(values) != dimension {
			t.Errorf("embedding %d has dimension %d, embedding 0 has %d", i, len(values), dimension)
			continue
		}
		norm := 0.0
		for _, v := range values {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatalf("embedding %d has a non-finite value %v", i, v)
			}
			norm += float64(v) * float64(v)
		}
		if norm == 0 {
			t.Errorf("embedding %d is all zeros", i)
		}
	}
	if response.GetModel() != name {
		t.Errorf("model = %q, want %q", response.GetModel(), name)
	}
	if response.GetUsage().GetPromptTokens() <= 0 {
		t.Errorf("usage = %v, want prompt_tokens > 0", response.GetUsage())
	}
	if similarity := cosine(embeddings[0].GetValues(), embeddings[1].GetValues()); similarity > 0.9999 {
		t.Errorf("two different texts embed alike (cosine %.6f)", similarity)
	}

	// The same request again gives the same vectors.
	again, err := c.Embed(callContext(t), request)
	if err != nil {
		t.Fatalf("Embed again: %v", err)
	}
	if len(again.GetEmbeddings()) != len(inputs) {
		t.Fatalf("%d embeddings on repeat for %d inputs", len(again.GetEmbeddings()), len(inputs))
	}
	for i, embedding := range again.GetEmbeddings() {
		first, repeat := embeddings[i].GetValues(), embedding.GetValues()
		if len(repeat) != len(first) {
			t.Errorf("embedding %d: dimension %d on repeat, %d before", i, len(repeat), len(first))
			continue
		}
		worst := 0.0
		for j := range first {
			worst = max(worst, math.Abs(float64(first[j])-float64(repeat[j])))
		}
		if similarity := cosine(first, repeat); worst > 1e-5 || similarity < 0.999999 {
			t.Errorf("embedding %d differs on repeat: max |difference| %g, cosine %.8f", i, worst, similarity)
		}
	}
	t.Logf("%s: %d embeddings of dimension %d, %d prompt tokens", name, len(embeddings), dimension, response.GetUsage().GetPromptTokens())
}

// onePixelPNG is a valid 1x1 PNG.
func onePixelPNG(t *testing.T) []byte {
	t.Helper()
	picture := image.NewRGBA(image.Rect(0, 0, 1, 1))
	picture.Set(0, 0, color.RGBA{R: 0, G: 105, B: 148, A: 255})
	var encoded bytes.Buffer
	if err := png.Encode(&encoded, picture); err != nil {
		t.Fatal(err)
	}
	return encoded.Bytes()
}

// checkRefusedImage fails unless err is INVALID_ARGUMENT with a google.rpc.BadRequest violation of
// messages[0].parts[0].image that names the model.
func checkRefusedImage(t *testing.T, call string, err error) {
	t.Helper()
	const field = "messages[0].parts[0].image"
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		t.Fatalf("%s with an image part = %v, want INVALID_ARGUMENT", call, err)
	}
	for _, detail := range st.Details() {
		badRequest, ok := detail.(*errdetails.BadRequest)
		if !ok {
			continue
		}
		for _, violation := range badRequest.GetFieldViolations() {
			if violation.GetField() == field {
				if !strings.Contains(violation.GetDescription(), model()) {
					t.Errorf("%s: the violation of %s does not name the model %q: %q", call, field, model(), violation.GetDescription())
				}
				return
			}
		}
	}
	t.Errorf("%s: INVALID_ARGUMENT details %v lack a google.rpc.BadRequest violation of %s", call, st.Details(), field)
}

// TestImageToModelWithoutVisionIsRefused: never silently drop; an image the model cannot see is refused by field.
func TestImageToModelWithoutVisionIsRefused(t *testing.T) {
	c := client(t)
	response, err := c.ListModels(callContext(t), &modelwirev1.ListModelsRequest{})
	if err != nil {
		t.Fatalf("ListModels: %v", err)
	}
	for _, m := range response.GetModels() {
		if m.GetModel() == model() && slices.Contains(m.GetCapabilities(), modelwirev1.Capability_CAPABILITY_VISION) {
			t.Fatalf("%s has CAPABILITY_VISION; this test needs a model without it", model())
		}
	}
	request := greedyRequest(model(), maxNewTokens)
	request.Messages = []*modelwirev1.ModelMessage{{
		Role: modelwirev1.Role_ROLE_USER,
		Parts: []*modelwirev1.ContentPart{
			{Part: &modelwirev1.ContentPart_Image{Image: &modelwirev1.Image{
				Source:   &modelwirev1.Image_Data{Data: onePixelPNG(t)},
				MimeType: "image/png",
			}}},
			{Part: &modelwirev1.ContentPart_Text{Text: "What colour is this image?"}},
		},
	}}
	_, err = c.Generate(callContext(t), request)
	checkRefusedImage(t, "Generate", err)

	responses, err := c.GenerateStream(callContext(t), request)
	if err == nil {
		var chunk *modelwirev1.ModelOutput
		for err == nil {
			if chunk, err = responses.Recv(); err == nil {
				t.Fatalf("GenerateStream with an image part sent %v", chunk)
			}
		}
	}
	checkRefusedImage(t, "GenerateStream", err)
}
