package dev.modelwire.interop;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.google.protobuf.Any;
import com.google.protobuf.ByteString;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import com.google.protobuf.util.JsonFormat;
import com.google.rpc.BadRequest;
import dev.modelwire.v1.Capability;
import dev.modelwire.v1.ContentPart;
import dev.modelwire.v1.CountTokenRequest;
import dev.modelwire.v1.CountTokenResponse;
import dev.modelwire.v1.EmbedRequest;
import dev.modelwire.v1.EmbedResponse;
import dev.modelwire.v1.Embedding;
import dev.modelwire.v1.FinishReason;
import dev.modelwire.v1.Image;
import dev.modelwire.v1.ListModelsRequest;
import dev.modelwire.v1.ListModelsResponse;
import dev.modelwire.v1.ModelMessage;
import dev.modelwire.v1.ModelMetadata;
import dev.modelwire.v1.ModelOutput;
import dev.modelwire.v1.ModelRequest;
import dev.modelwire.v1.ModelWorkerGrpc;
import dev.modelwire.v1.RequestContext;
import dev.modelwire.v1.Role;
import dev.modelwire.v1.SamplingParams;
import dev.modelwire.v1.Tool;
import dev.modelwire.v1.ToolCall;
import dev.modelwire.v1.ToolCallDelta;
import dev.modelwire.v1.ToolChoice;
import dev.modelwire.v1.Usage;
import io.grpc.Context;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import io.grpc.stub.StreamObserver;
import java.awt.image.BufferedImage;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import javax.imageio.ImageIO;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Calls a live modelwire worker through the generated blocking and async stubs.
 *
 * <p>{@code make interop} starts a worker on a free port and runs {@code mvn -q test} with
 * MODELWIRE_ADDR=HOST:PORT and MODELWIRE_INTEROP_REQUIRED=1. Without MODELWIRE_ADDR the tests are
 * skipped, unless MODELWIRE_INTEROP_REQUIRED is set, which makes a missing address a failure.
 * MODELWIRE_MODEL names the model (default gemma-3-270m, the worker's embedded default).
 */
class ModelWorkerInteropTest {
  private static final String PROMPT = "Write one sentence about the sea.";
  private static final int MAX_NEW_TOKENS = 16;
  private static final long CALL_TIMEOUT_SECONDS = 60;

  private static ManagedChannel channel;
  private static String model;

  @BeforeAll
  static void connect() {
    String addr = System.getenv("MODELWIRE_ADDR");
    if (addr == null || addr.isEmpty()) {
      if (System.getenv("MODELWIRE_INTEROP_REQUIRED") != null) {
        fail("MODELWIRE_ADDR is not set but MODELWIRE_INTEROP_REQUIRED is");
      }
      Assumptions.abort("MODELWIRE_ADDR is not set; `make interop` starts a worker and sets it");
    }
    String configured = System.getenv("MODELWIRE_MODEL");
    model = configured == null || configured.isEmpty() ? "gemma-3-270m" : configured;
    channel = ManagedChannelBuilder.forTarget(addr).usePlaintext().build();
  }

  @AfterAll
  static void disconnect() throws InterruptedException {
    if (channel != null) {
      channel.shutdownNow().awaitTermination(10, TimeUnit.SECONDS);
    }
  }

  private static ModelWorkerGrpc.ModelWorkerBlockingStub blocking() {
    return ModelWorkerGrpc.newBlockingStub(channel).withDeadlineAfter(CALL_TIMEOUT_SECONDS, TimeUnit.SECONDS);
  }

  private static ModelWorkerGrpc.ModelWorkerStub async() {
    return ModelWorkerGrpc.newStub(channel).withDeadlineAfter(CALL_TIMEOUT_SECONDS, TimeUnit.SECONDS);
  }

  /** At most {@code maxNewTokens} tokens at temperature 0, which is deterministic. */
  private static ModelRequest greedyRequest(String modelName, int maxNewTokens) {
    return ModelRequest.newBuilder()
        .setModel(modelName)
        .addMessages(ModelMessage.newBuilder().setRole(Role.ROLE_USER).setContent(PROMPT))
        .setSampling(SamplingParams.newBuilder().setTemperature(0f).setMaxNewTokens(maxNewTokens))
        .setContext(RequestContext.newBuilder().setRequestId("java-interop-" + modelName))
        .build();
  }

  private static void checkUsage(Usage usage) {
    assertTrue(usage.getPromptTokens() > 0, () -> "prompt_tokens > 0: " + usage);
    assertTrue(
        usage.getCompletionTokens() > 0 && usage.getCompletionTokens() <= MAX_NEW_TOKENS,
        () -> "completion_tokens in [1, " + MAX_NEW_TOKENS + "]: " + usage);
    assertEquals(usage.getPromptTokens() + usage.getCompletionTokens(), usage.getTotalTokens(), "total_tokens");
  }

  private static void checkFinishReason(ModelOutput output) {
    FinishReason reason = output.getFinishReason();
    assertTrue(
        reason == FinishReason.FINISH_REASON_STOP || reason == FinishReason.FINISH_REASON_LENGTH,
        () -> "finish_reason STOP or LENGTH, got " + reason);
    if (reason == FinishReason.FINISH_REASON_LENGTH) {
      assertEquals(MAX_NEW_TOKENS, output.getUsage().getCompletionTokens(), "completion_tokens at LENGTH");
    }
  }

  /** Checks a whole stream against the unary answer of the same greedy request. */
  private static void checkStream(List<ModelOutput> chunks, ModelOutput unary) {
    assertTrue(chunks.size() >= 2, () -> "deltas and a final message, got " + chunks);
    StringBuilder text = new StringBuilder();
    int deltas = 0;
    for (int i = 0; i < chunks.size(); i++) {
      ModelOutput chunk = chunks.get(i);
      text.append(chunk.getText());
      if (!chunk.getText().isEmpty()) {
        deltas++;
      }
      if (i < chunks.size() - 1) {
        assertEquals(FinishReason.FINISH_REASON_UNSPECIFIED, chunk.getFinishReason(), "finish_reason before the end");
        assertFalse(chunk.hasUsage(), "usage before the end");
      }
    }
    ModelOutput last = chunks.get(chunks.size() - 1);
    assertTrue(last.hasUsage(), "the last message carries usage");
    checkUsage(last.getUsage());
    checkFinishReason(last);
    assertFalse(text.toString().isEmpty(), "the deltas are empty");
    assertEquals(unary.getText(), text.toString(), "stream text == Generate text");
    assertTrue(deltas <= last.getUsage().getCompletionTokens(), "no more deltas than completion tokens");
    assertEquals(unary.getUsage().getPromptTokens(), last.getUsage().getPromptTokens(), "prompt_tokens");
    assertEquals(unary.getUsage().getCompletionTokens(), last.getUsage().getCompletionTokens(), "completion_tokens");
    assertEquals(unary.getFinishReason(), last.getFinishReason(), "finish_reason");
  }

  private static <T> T await(CompletableFuture<T> future) throws Exception {
    try {
      return future.get(CALL_TIMEOUT_SECONDS + 10, TimeUnit.SECONDS);
    } catch (ExecutionException e) {
      if (e.getCause() instanceof Exception cause) {
        throw cause;
      }
      throw e;
    }
  }

  /** Collects a server stream through the async stub. */
  private static final class Collector implements StreamObserver<ModelOutput> {
    final List<ModelOutput> chunks = new ArrayList<>();
    final CompletableFuture<List<ModelOutput>> done = new CompletableFuture<>();

    @Override
    public void onNext(ModelOutput value) {
      chunks.add(value);
    }

    @Override
    public void onError(Throwable t) {
      done.completeExceptionally(t);
    }

    @Override
    public void onCompleted() {
      done.complete(chunks);
    }
  }

  @Test
  void listModels() {
    ListModelsResponse response = blocking().listModels(ListModelsRequest.getDefaultInstance());
    ModelMetadata found =
        response.getModelsList().stream()
            .filter(m -> m.getModel().equals(model))
            .findFirst()
            .orElseThrow(() -> new AssertionError(model + " not in " + response));
    assertFalse(found.getProvider().isEmpty(), "provider");
    assertTrue(found.getContextLength() > 0, "context_length");
    assertTrue(found.getMaxOutputTokens() > 0, "max_output_tokens");
    assertTrue(found.getCapabilitiesList().contains(Capability.CAPABILITY_STREAMING), "CAPABILITY_STREAMING");
  }

  @Test
  void generateBlocking() {
    ModelOutput output = blocking().generate(greedyRequest(model, MAX_NEW_TOKENS));
    assertFalse(output.getText().isEmpty(), "text");
    assertEquals(model, output.getModel());
    checkUsage(output.getUsage());
    checkFinishReason(output);
    assertTrue(output.getTiming().getTotalSeconds() > 0, "timing.total_seconds");
  }

  @Test
  void generateAsync() throws Exception {
    CompletableFuture<ModelOutput> result = new CompletableFuture<>();
    async()
        .generate(
            greedyRequest(model, MAX_NEW_TOKENS),
            new StreamObserver<>() {
              @Override
              public void onNext(ModelOutput value) {
                result.complete(value);
              }

              @Override
              public void onError(Throwable t) {
                result.completeExceptionally(t);
              }

              @Override
              public void onCompleted() {
                result.complete(null);
              }
            });
    ModelOutput output = await(result);
    ModelOutput unary = blocking().generate(greedyRequest(model, MAX_NEW_TOKENS));
    assertEquals(unary.getText(), output.getText(), "async and blocking Generate agree at temperature 0");
    checkUsage(output.getUsage());
    checkFinishReason(output);
  }

  @Test
  void generateStreamBlocking() {
    ModelOutput unary = blocking().generate(greedyRequest(model, MAX_NEW_TOKENS));
    List<ModelOutput> chunks = new ArrayList<>();
    blocking().generateStream(greedyRequest(model, MAX_NEW_TOKENS)).forEachRemaining(chunks::add);
    checkStream(chunks, unary);
  }

  @Test
  void generateStreamAsync() throws Exception {
    ModelOutput unary = blocking().generate(greedyRequest(model, MAX_NEW_TOKENS));
    Collector collector = new Collector();
    async().generateStream(greedyRequest(model, MAX_NEW_TOKENS), collector);
    checkStream(await(collector.done), unary);
  }

  @Test
  void countToken() {
    CountTokenResponse counted =
        blocking().countToken(CountTokenRequest.newBuilder().setModel(model).setPrompt(PROMPT).build());
    assertTrue(counted.getCount() > 0, "count");
    assertFalse(counted.getTokenizer().isEmpty(), "tokenizer");

    ModelRequest request = greedyRequest(model, MAX_NEW_TOKENS);
    CountTokenResponse messages =
        blocking()
            .countToken(
                CountTokenRequest.newBuilder().setModel(model).addAllMessages(request.getMessagesList()).build());
    if (messages.getExact()) {
      ModelOutput output = blocking().generate(request);
      assertEquals(output.getUsage().getPromptTokens(), messages.getCount(), "CountToken(messages) == prompt_tokens");
    }
  }

  @Test
  void unknownModelIsNotFound() {
    StatusRuntimeException error =
        assertThrows(StatusRuntimeException.class, () -> blocking().generate(greedyRequest("no-such-model", MAX_NEW_TOKENS)));
    assertEquals(Status.Code.NOT_FOUND, error.getStatus().getCode());
    String message = error.getStatus().getDescription();
    assertTrue(message != null && message.contains(model) && message.contains("no-such-model"), () -> "message: " + message);
  }

  @Test
  void unknownModelIsNotFoundAsync() {
    Collector collector = new Collector();
    async().generateStream(greedyRequest("no-such-model", MAX_NEW_TOKENS), collector);
    StatusRuntimeException error = assertThrows(StatusRuntimeException.class, () -> await(collector.done));
    assertEquals(Status.Code.NOT_FOUND, error.getStatus().getCode());
    assertTrue(error.getStatus().getDescription().contains(model), () -> "message: " + error.getStatus());
  }

  @Test
  void invalidArgumentHasBadRequest() throws Exception {
    ModelRequest request =
        greedyRequest(model, MAX_NEW_TOKENS).toBuilder()
            .setSampling(SamplingParams.newBuilder().setTemperature(5f).setMaxNewTokens(MAX_NEW_TOKENS))
            .build();
    StatusRuntimeException error = assertThrows(StatusRuntimeException.class, () -> blocking().generate(request));
    assertEquals(Status.Code.INVALID_ARGUMENT, error.getStatus().getCode());
    com.google.rpc.Status details = StatusProto.fromThrowable(error);
    assertTrue(details != null, "rich status details");
    for (Any detail : details.getDetailsList()) {
      if (detail.is(BadRequest.class)) {
        for (BadRequest.FieldViolation violation : detail.unpack(BadRequest.class).getFieldViolationsList()) {
          if (violation.getField().equals("sampling.temperature")) {
            return;
          }
        }
      }
    }
    fail("no google.rpc.BadRequest violation of sampling.temperature in " + details);
  }

  @Test
  void oneMillisecondDeadlineIsExceeded() {
    blocking().listModels(ListModelsRequest.getDefaultInstance()); // connect first
    StatusRuntimeException error =
        assertThrows(
            StatusRuntimeException.class,
            () ->
                ModelWorkerGrpc.newBlockingStub(channel)
                    .withDeadlineAfter(1, TimeUnit.MILLISECONDS)
                    .generate(greedyRequest(model, MAX_NEW_TOKENS)));
    assertEquals(Status.Code.DEADLINE_EXCEEDED, error.getStatus().getCode());

    Collector collector = new Collector();
    ModelWorkerGrpc.newStub(channel)
        .withDeadlineAfter(1, TimeUnit.MILLISECONDS)
        .generateStream(greedyRequest(model, MAX_NEW_TOKENS), collector);
    StatusRuntimeException streamError = assertThrows(StatusRuntimeException.class, () -> await(collector.done));
    assertEquals(Status.Code.DEADLINE_EXCEEDED, streamError.getStatus().getCode());
  }

  @Test
  void cancelAsyncStreamAfterFirstChunk() throws Exception {
    CompletableFuture<ModelOutput> first = new CompletableFuture<>();
    CompletableFuture<Status> closed = new CompletableFuture<>();
    async()
        .generateStream(
            greedyRequest(model, 256),
            new ClientResponseObserver<ModelRequest, ModelOutput>() {
              private ClientCallStreamObserver<ModelRequest> call;

              @Override
              public void beforeStart(ClientCallStreamObserver<ModelRequest> requestStream) {
                call = requestStream;
              }

              @Override
              public void onNext(ModelOutput value) {
                if (first.complete(value)) {
                  call.cancel("the interop test cancels after the first chunk", null);
                }
              }

              @Override
              public void onError(Throwable t) {
                first.completeExceptionally(t);
                closed.complete(Status.fromThrowable(t));
              }

              @Override
              public void onCompleted() {
                first.completeExceptionally(new AssertionError("the stream completed without a chunk"));
                closed.complete(Status.OK);
              }
            });
    ModelOutput chunk = await(first);
    assertEquals(FinishReason.FINISH_REASON_UNSPECIFIED, chunk.getFinishReason(), "the first of 256 tokens is not the last");
    assertEquals(Status.Code.CANCELLED, await(closed).getCode());
    checkNextCallSucceeds();
  }

  @Test
  void cancelBlockingStreamAfterFirstChunk() throws Exception {
    Context.CancellableContext context = Context.current().withCancellation();
    Iterator<ModelOutput> chunks;
    Context previous = context.attach();
    try {
      chunks = blocking().generateStream(greedyRequest(model, 256));
    } finally {
      context.detach(previous);
    }
    assertTrue(chunks.hasNext(), "a first chunk");
    assertEquals(FinishReason.FINISH_REASON_UNSPECIFIED, chunks.next().getFinishReason());
    context.cancel(null);
    StatusRuntimeException error =
        assertThrows(
            StatusRuntimeException.class,
            () -> {
              while (chunks.hasNext()) {
                chunks.next();
              }
            });
    assertEquals(Status.Code.CANCELLED, error.getStatus().getCode());
    checkNextCallSucceeds();
  }

  /** A cancelled generation must not hold the model: the next call succeeds promptly. */
  private static void checkNextCallSucceeds() {
    ModelOutput output =
        ModelWorkerGrpc.newBlockingStub(channel)
            .withDeadlineAfter(30, TimeUnit.SECONDS)
            .generate(greedyRequest(model, MAX_NEW_TOKENS));
    assertFalse(output.getText().isEmpty(), "text after a cancelled stream");
    assertNotEquals(FinishReason.FINISH_REASON_UNSPECIFIED, output.getFinishReason());
  }

  // ---- contract v1.1: a forced tool call (unary and streamed), Embed, and the refusal of an image

  private static final String TOOL_NAME = "get_weather";
  /** Two required keys, one of them an enum, so that a small model's constrained output ends soon. */
  private static final String TOOL_SCHEMA =
      "{\"type\": \"object\", \"properties\": {"
          + "\"city\": {\"type\": \"string\", \"description\": \"The city, for example Paris\"}, "
          + "\"unit\": {\"type\": \"string\", \"enum\": [\"celsius\", \"fahrenheit\"]}}, "
          + "\"required\": [\"city\", \"unit\"]}";
  private static final String TOOL_PROMPT = "What is the weather in Paris, in celsius?";
  private static final int TOOL_MAX_NEW_TOKENS = 64;
  private static final String IMAGE_FIELD = "messages[0].parts[0].image";

  /** Forces a call of TOOL_NAME (tool_choice.tool_name) at temperature 0. */
  private static ModelRequest toolRequest(String modelName) {
    return ModelRequest.newBuilder()
        .setModel(modelName)
        .addMessages(ModelMessage.newBuilder().setRole(Role.ROLE_USER).setContent(TOOL_PROMPT))
        .setSampling(SamplingParams.newBuilder().setTemperature(0f).setMaxNewTokens(TOOL_MAX_NEW_TOKENS))
        .addTools(
            Tool.newBuilder()
                .setName(TOOL_NAME)
                .setDescription("The current weather in a city.")
                .setParametersJsonSchema(TOOL_SCHEMA))
        .setToolChoice(ToolChoice.newBuilder().setToolName(TOOL_NAME))
        .setContext(RequestContext.newBuilder().setRequestId("java-interop-tool-" + modelName))
        .build();
  }

  /** Fails unless the arguments are a JSON object with the schema's required keys and types. */
  private static void checkToolArguments(String arguments) {
    Struct.Builder parsed = Struct.newBuilder();
    try {
      JsonFormat.parser().merge(arguments, parsed);
    } catch (InvalidProtocolBufferException e) {
      fail("tool call arguments are not a JSON object: " + arguments, e);
    }
    Map<String, Value> fields = parsed.getFieldsMap();
    Value city = fields.get("city");
    assertTrue(city != null && city.hasStringValue(), () -> "city is a string in " + arguments);
    Value unit = fields.get("unit");
    assertTrue(
        unit != null && List.of("celsius", "fahrenheit").contains(unit.getStringValue()),
        () -> "unit is celsius or fahrenheit in " + arguments);
  }

  private static void checkToolUsage(Usage usage) {
    assertTrue(usage.getPromptTokens() > 0, () -> "prompt_tokens > 0: " + usage);
    assertTrue(
        usage.getCompletionTokens() > 0 && usage.getCompletionTokens() <= TOOL_MAX_NEW_TOKENS,
        () -> "completion_tokens in [1, " + TOOL_MAX_NEW_TOKENS + "]: " + usage);
    assertEquals(usage.getPromptTokens() + usage.getCompletionTokens(), usage.getTotalTokens(), "total_tokens");
  }

  @Test
  void generateForcedTool() {
    ModelOutput output = blocking().generate(toolRequest(model));
    assertEquals(FinishReason.FINISH_REASON_TOOL_CALLS, output.getFinishReason(), "finish_reason");
    assertEquals(1, output.getToolCallsCount(), () -> "one call of " + TOOL_NAME + ": " + output.getToolCallsList());
    ToolCall call = output.getToolCalls(0);
    assertEquals(TOOL_NAME, call.getName(), "tool call name");
    assertFalse(call.getId().isEmpty(), "the tool call has an id (a ROLE_TOOL answer needs it as tool_call_id)");
    checkToolArguments(call.getArgumentsJson());
    assertEquals("", output.getText(), "no text next to the forced tool call");
    assertEquals(0, output.getToolCallDeltasCount(), "tool_call_deltas are GenerateStream's");
    assertTrue(output.hasUsage(), "usage");
    checkToolUsage(output.getUsage());
  }

  /** Concatenates the tool_call_deltas of the same forced call (async stub) and compares with Generate. */
  @Test
  void generateStreamForcedTool() throws Exception {
    ModelOutput unary = blocking().generate(toolRequest(model));
    Collector collector = new Collector();
    async().generateStream(toolRequest(model), collector);
    List<ModelOutput> chunks = await(collector.done);
    assertFalse(chunks.isEmpty(), "the stream is empty");

    List<String> ids = new ArrayList<>();
    List<String> names = new ArrayList<>();
    List<StringBuilder> arguments = new ArrayList<>();
    List<Integer> deltas = new ArrayList<>();
    for (int i = 0; i < chunks.size(); i++) {
      ModelOutput chunk = chunks.get(i);
      final int message = i;
      assertEquals("", chunk.getText(), () -> "message " + message + " carries text next to the forced tool call");
      assertEquals(0, chunk.getToolCallsCount(), () -> "message " + message + " carries complete tool_calls");
      if (i < chunks.size() - 1) {
        assertEquals(FinishReason.FINISH_REASON_UNSPECIFIED, chunk.getFinishReason(), "finish_reason before the end");
        assertFalse(chunk.hasUsage(), "usage before the end");
      }
      for (ToolCallDelta delta : chunk.getToolCallDeltasList()) {
        int index = delta.getIndex();
        assertTrue(
            index >= 0 && index <= arguments.size(),
            () -> "delta index " + index + " after " + arguments.size() + " calls (indexes count from 0)");
        if (index == arguments.size()) {
          assertFalse(delta.getId().isEmpty(), () -> "the first delta of call " + index + " carries the id: " + delta);
          assertFalse(delta.getName().isEmpty(), () -> "the first delta of call " + index + " carries the name: " + delta);
          ids.add(delta.getId());
          names.add(delta.getName());
          arguments.add(new StringBuilder());
          deltas.add(0);
        }
        arguments.get(index).append(delta.getArgumentsDelta());
        if (!delta.getArgumentsDelta().isEmpty()) {
          deltas.set(index, deltas.get(index) + 1);
        }
      }
    }
    ModelOutput last = chunks.get(chunks.size() - 1);
    assertEquals(FinishReason.FINISH_REASON_TOOL_CALLS, last.getFinishReason(), "the last message's finish_reason");
    assertTrue(last.hasUsage(), "the last message carries usage");
    checkToolUsage(last.getUsage());
    assertEquals(List.of(TOOL_NAME), names, "the deltas make one call of " + TOOL_NAME);
    String streamed = arguments.get(0).toString();
    checkToolArguments(streamed);
    assertTrue(deltas.get(0) >= 2, () -> "the arguments came in " + deltas.get(0) + " delta(s), not as generated");
    assertEquals(1, unary.getToolCallsCount(), "Generate's call");
    assertEquals(unary.getToolCalls(0).getArgumentsJson(), streamed, "streamed arguments == Generate arguments");
    assertEquals(unary.getUsage().getCompletionTokens(), last.getUsage().getCompletionTokens(), "completion_tokens");
  }

  /**
   * MODELWIRE_EMBED_MODEL, else the model under test when it has CAPABILITY_EMBEDDINGS, else the first
   * served model that has it.
   */
  private static String embedModel() {
    String configured = System.getenv("MODELWIRE_EMBED_MODEL");
    if (configured != null && !configured.isEmpty()) {
      return configured;
    }
    ListModelsResponse response = blocking().listModels(ListModelsRequest.getDefaultInstance());
    List<String> embedding =
        response.getModelsList().stream()
            .filter(m -> m.getCapabilitiesList().contains(Capability.CAPABILITY_EMBEDDINGS))
            .map(ModelMetadata::getModel)
            .toList();
    if (embedding.contains(model)) {
      return model;
    }
    assertFalse(embedding.isEmpty(), () -> "no served model has CAPABILITY_EMBEDDINGS: " + response);
    return embedding.get(0);
  }

  private static double cosine(List<Float> a, List<Float> b) {
    double dot = 0;
    double na = 0;
    double nb = 0;
    for (int i = 0; i < a.size(); i++) {
      dot += a.get(i) * (double) b.get(i);
      na += a.get(i) * (double) a.get(i);
      nb += b.get(i) * (double) b.get(i);
    }
    return dot / Math.sqrt(na * nb);
  }

  @Test
  void embed() {
    String name = embedModel();
    EmbedRequest request =
        EmbedRequest.newBuilder()
            .setModel(name)
            .addInputs("The sea is calm this morning.")
            .addInputs("A cat sleeps on the warm sofa.")
            .build();
    EmbedResponse response = blocking().embed(request);
    assertEquals(2, response.getEmbeddingsCount(), "one embedding per input");
    int dimension = response.getEmbeddings(0).getValuesCount();
    assertTrue(dimension > 0, "the first embedding is empty");
    for (Embedding embedding : response.getEmbeddingsList()) {
      assertEquals(dimension, embedding.getValuesCount(), "every embedding has the same dimension");
      double norm = 0;
      for (float value : embedding.getValuesList()) {
        assertTrue(Float.isFinite(value), "finite values");
        norm += value * (double) value;
      }
      assertTrue(norm > 0, "an embedding is all zeros");
    }
    assertEquals(name, response.getModel(), "model");
    assertTrue(response.getUsage().getPromptTokens() > 0, () -> "usage.prompt_tokens > 0: " + response.getUsage());
    double between = cosine(response.getEmbeddings(0).getValuesList(), response.getEmbeddings(1).getValuesList());
    assertTrue(between < 0.9999, () -> "two different texts embed alike (cosine " + between + ")");

    EmbedResponse again = blocking().embed(request);
    assertEquals(2, again.getEmbeddingsCount(), "one embedding per input on repeat");
    for (int i = 0; i < 2; i++) {
      List<Float> first = response.getEmbeddings(i).getValuesList();
      List<Float> repeat = again.getEmbeddings(i).getValuesList();
      assertEquals(first.size(), repeat.size(), "dimension on repeat");
      double worst = 0;
      for (int j = 0; j < first.size(); j++) {
        worst = Math.max(worst, Math.abs(first.get(j) - (double) repeat.get(j)));
      }
      double similarity = cosine(first, repeat);
      final int index = i;
      final double difference = worst;
      assertTrue(
          difference <= 1e-5 && similarity >= 0.999999,
          () -> "embedding " + index + " differs on repeat: max |difference| " + difference + ", cosine " + similarity);
    }
  }

  private static ByteString onePixelPng() throws IOException {
    BufferedImage picture = new BufferedImage(1, 1, BufferedImage.TYPE_INT_RGB);
    picture.setRGB(0, 0, 0x006994);
    ByteArrayOutputStream encoded = new ByteArrayOutputStream();
    assertTrue(ImageIO.write(picture, "png", encoded), "a PNG writer");
    return ByteString.copyFrom(encoded.toByteArray());
  }

  /** INVALID_ARGUMENT with a google.rpc.BadRequest violation of the image part that names the model. */
  private static void checkRefusedImage(Throwable error) throws Exception {
    assertEquals(Status.Code.INVALID_ARGUMENT, Status.fromThrowable(error).getCode(), () -> "status of " + error);
    com.google.rpc.Status details = StatusProto.fromThrowable(error);
    assertTrue(details != null, "rich status details");
    for (Any detail : details.getDetailsList()) {
      if (detail.is(BadRequest.class)) {
        for (BadRequest.FieldViolation violation : detail.unpack(BadRequest.class).getFieldViolationsList()) {
          if (violation.getField().equals(IMAGE_FIELD)) {
            assertTrue(
                violation.getDescription().contains(model),
                () -> "the violation names the model " + model + ": " + violation.getDescription());
            return;
          }
        }
      }
    }
    fail("no google.rpc.BadRequest violation of " + IMAGE_FIELD + " in " + details);
  }

  /** Never silently drop: an image to a model without CAPABILITY_VISION is refused by field. */
  @Test
  void imageToModelWithoutVisionIsRefused() throws Exception {
    ListModelsResponse models = blocking().listModels(ListModelsRequest.getDefaultInstance());
    for (ModelMetadata metadata : models.getModelsList()) {
      if (metadata.getModel().equals(model)) {
        assertFalse(
            metadata.getCapabilitiesList().contains(Capability.CAPABILITY_VISION),
            model + " has CAPABILITY_VISION; this test needs a model without it");
      }
    }
    ModelRequest request =
        greedyRequest(model, MAX_NEW_TOKENS).toBuilder()
            .clearMessages()
            .addMessages(
                ModelMessage.newBuilder()
                    .setRole(Role.ROLE_USER)
                    .addParts(
                        ContentPart.newBuilder()
                            .setImage(Image.newBuilder().setData(onePixelPng()).setMimeType("image/png")))
                    .addParts(ContentPart.newBuilder().setText("What colour is this image?")))
            .build();
    StatusRuntimeException error = assertThrows(StatusRuntimeException.class, () -> blocking().generate(request));
    checkRefusedImage(error);

    Collector collector = new Collector();
    async().generateStream(request, collector);
    StatusRuntimeException streamError = assertThrows(StatusRuntimeException.class, () -> await(collector.done));
    assertTrue(collector.chunks.isEmpty(), () -> "the refused stream sent " + collector.chunks);
    checkRefusedImage(streamError);
  }
}
