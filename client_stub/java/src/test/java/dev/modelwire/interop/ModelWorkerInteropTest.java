package dev.modelwire.interop;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.google.protobuf.Any;
import com.google.rpc.BadRequest;
import dev.modelwire.v1.Capability;
import dev.modelwire.v1.CountTokenRequest;
import dev.modelwire.v1.CountTokenResponse;
import dev.modelwire.v1.FinishReason;
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
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
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
}
