package dev.modelwire.v1;

import static io.grpc.MethodDescriptor.generateFullMethodName;

/**
 * <pre>
 * ModelWorker serves generation and token counting for the models a worker is configured with.
 * </pre>
 */
@io.grpc.stub.annotations.GrpcGenerated
public final class ModelWorkerGrpc {

  private ModelWorkerGrpc() {}

  public static final java.lang.String SERVICE_NAME = "modelwire.v1.ModelWorker";

  // Static method descriptors that strictly reflect the proto.
  private static volatile io.grpc.MethodDescriptor<dev.modelwire.v1.ModelRequest,
      dev.modelwire.v1.ModelOutput> getGenerateMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "Generate",
      requestType = dev.modelwire.v1.ModelRequest.class,
      responseType = dev.modelwire.v1.ModelOutput.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.modelwire.v1.ModelRequest,
      dev.modelwire.v1.ModelOutput> getGenerateMethod() {
    io.grpc.MethodDescriptor<dev.modelwire.v1.ModelRequest, dev.modelwire.v1.ModelOutput> getGenerateMethod;
    if ((getGenerateMethod = ModelWorkerGrpc.getGenerateMethod) == null) {
      synchronized (ModelWorkerGrpc.class) {
        if ((getGenerateMethod = ModelWorkerGrpc.getGenerateMethod) == null) {
          ModelWorkerGrpc.getGenerateMethod = getGenerateMethod =
              io.grpc.MethodDescriptor.<dev.modelwire.v1.ModelRequest, dev.modelwire.v1.ModelOutput>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "Generate"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.ModelRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.ModelOutput.getDefaultInstance()))
              .setSchemaDescriptor(new ModelWorkerMethodDescriptorSupplier("Generate"))
              .build();
        }
      }
    }
    return getGenerateMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.modelwire.v1.ModelRequest,
      dev.modelwire.v1.ModelOutput> getGenerateStreamMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "GenerateStream",
      requestType = dev.modelwire.v1.ModelRequest.class,
      responseType = dev.modelwire.v1.ModelOutput.class,
      methodType = io.grpc.MethodDescriptor.MethodType.SERVER_STREAMING)
  public static io.grpc.MethodDescriptor<dev.modelwire.v1.ModelRequest,
      dev.modelwire.v1.ModelOutput> getGenerateStreamMethod() {
    io.grpc.MethodDescriptor<dev.modelwire.v1.ModelRequest, dev.modelwire.v1.ModelOutput> getGenerateStreamMethod;
    if ((getGenerateStreamMethod = ModelWorkerGrpc.getGenerateStreamMethod) == null) {
      synchronized (ModelWorkerGrpc.class) {
        if ((getGenerateStreamMethod = ModelWorkerGrpc.getGenerateStreamMethod) == null) {
          ModelWorkerGrpc.getGenerateStreamMethod = getGenerateStreamMethod =
              io.grpc.MethodDescriptor.<dev.modelwire.v1.ModelRequest, dev.modelwire.v1.ModelOutput>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.SERVER_STREAMING)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "GenerateStream"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.ModelRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.ModelOutput.getDefaultInstance()))
              .setSchemaDescriptor(new ModelWorkerMethodDescriptorSupplier("GenerateStream"))
              .build();
        }
      }
    }
    return getGenerateStreamMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.modelwire.v1.CountTokenRequest,
      dev.modelwire.v1.CountTokenResponse> getCountTokenMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "CountToken",
      requestType = dev.modelwire.v1.CountTokenRequest.class,
      responseType = dev.modelwire.v1.CountTokenResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.modelwire.v1.CountTokenRequest,
      dev.modelwire.v1.CountTokenResponse> getCountTokenMethod() {
    io.grpc.MethodDescriptor<dev.modelwire.v1.CountTokenRequest, dev.modelwire.v1.CountTokenResponse> getCountTokenMethod;
    if ((getCountTokenMethod = ModelWorkerGrpc.getCountTokenMethod) == null) {
      synchronized (ModelWorkerGrpc.class) {
        if ((getCountTokenMethod = ModelWorkerGrpc.getCountTokenMethod) == null) {
          ModelWorkerGrpc.getCountTokenMethod = getCountTokenMethod =
              io.grpc.MethodDescriptor.<dev.modelwire.v1.CountTokenRequest, dev.modelwire.v1.CountTokenResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "CountToken"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.CountTokenRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.CountTokenResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelWorkerMethodDescriptorSupplier("CountToken"))
              .build();
        }
      }
    }
    return getCountTokenMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.modelwire.v1.ListModelsRequest,
      dev.modelwire.v1.ListModelsResponse> getListModelsMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "ListModels",
      requestType = dev.modelwire.v1.ListModelsRequest.class,
      responseType = dev.modelwire.v1.ListModelsResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.modelwire.v1.ListModelsRequest,
      dev.modelwire.v1.ListModelsResponse> getListModelsMethod() {
    io.grpc.MethodDescriptor<dev.modelwire.v1.ListModelsRequest, dev.modelwire.v1.ListModelsResponse> getListModelsMethod;
    if ((getListModelsMethod = ModelWorkerGrpc.getListModelsMethod) == null) {
      synchronized (ModelWorkerGrpc.class) {
        if ((getListModelsMethod = ModelWorkerGrpc.getListModelsMethod) == null) {
          ModelWorkerGrpc.getListModelsMethod = getListModelsMethod =
              io.grpc.MethodDescriptor.<dev.modelwire.v1.ListModelsRequest, dev.modelwire.v1.ListModelsResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "ListModels"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.ListModelsRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.ListModelsResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelWorkerMethodDescriptorSupplier("ListModels"))
              .build();
        }
      }
    }
    return getListModelsMethod;
  }

  /**
   * Creates a new async stub that supports all call types for the service
   */
  public static ModelWorkerStub newStub(io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ModelWorkerStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ModelWorkerStub>() {
        @java.lang.Override
        public ModelWorkerStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ModelWorkerStub(channel, callOptions);
        }
      };
    return ModelWorkerStub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports all types of calls on the service
   */
  public static ModelWorkerBlockingV2Stub newBlockingV2Stub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ModelWorkerBlockingV2Stub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ModelWorkerBlockingV2Stub>() {
        @java.lang.Override
        public ModelWorkerBlockingV2Stub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ModelWorkerBlockingV2Stub(channel, callOptions);
        }
      };
    return ModelWorkerBlockingV2Stub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports unary and streaming output calls on the service
   */
  public static ModelWorkerBlockingStub newBlockingStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ModelWorkerBlockingStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ModelWorkerBlockingStub>() {
        @java.lang.Override
        public ModelWorkerBlockingStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ModelWorkerBlockingStub(channel, callOptions);
        }
      };
    return ModelWorkerBlockingStub.newStub(factory, channel);
  }

  /**
   * Creates a new ListenableFuture-style stub that supports unary calls on the service
   */
  public static ModelWorkerFutureStub newFutureStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ModelWorkerFutureStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ModelWorkerFutureStub>() {
        @java.lang.Override
        public ModelWorkerFutureStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ModelWorkerFutureStub(channel, callOptions);
        }
      };
    return ModelWorkerFutureStub.newStub(factory, channel);
  }

  /**
   * <pre>
   * ModelWorker serves generation and token counting for the models a worker is configured with.
   * </pre>
   */
  public interface AsyncService {

    /**
     * <pre>
     * Generate returns the whole completion in one message.
     * </pre>
     */
    default void generate(dev.modelwire.v1.ModelRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.ModelOutput> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getGenerateMethod(), responseObserver);
    }

    /**
     * <pre>
     * GenerateStream returns the completion as deltas; the last message carries finish_reason and usage.
     * </pre>
     */
    default void generateStream(dev.modelwire.v1.ModelRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.ModelOutput> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getGenerateStreamMethod(), responseObserver);
    }

    /**
     * <pre>
     * CountToken counts the tokens of a prompt or of chat messages with the model's tokenizer.
     * </pre>
     */
    default void countToken(dev.modelwire.v1.CountTokenRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.CountTokenResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getCountTokenMethod(), responseObserver);
    }

    /**
     * <pre>
     * ListModels describes every model this worker serves.
     * </pre>
     */
    default void listModels(dev.modelwire.v1.ListModelsRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.ListModelsResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getListModelsMethod(), responseObserver);
    }
  }

  /**
   * Base class for the server implementation of the service ModelWorker.
   * <pre>
   * ModelWorker serves generation and token counting for the models a worker is configured with.
   * </pre>
   */
  public static abstract class ModelWorkerImplBase
      implements io.grpc.BindableService, AsyncService {

    @java.lang.Override public final io.grpc.ServerServiceDefinition bindService() {
      return ModelWorkerGrpc.bindService(this);
    }
  }

  /**
   * A stub to allow clients to do asynchronous rpc calls to service ModelWorker.
   * <pre>
   * ModelWorker serves generation and token counting for the models a worker is configured with.
   * </pre>
   */
  public static final class ModelWorkerStub
      extends io.grpc.stub.AbstractAsyncStub<ModelWorkerStub> {
    private ModelWorkerStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ModelWorkerStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ModelWorkerStub(channel, callOptions);
    }

    /**
     * <pre>
     * Generate returns the whole completion in one message.
     * </pre>
     */
    public void generate(dev.modelwire.v1.ModelRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.ModelOutput> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getGenerateMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * GenerateStream returns the completion as deltas; the last message carries finish_reason and usage.
     * </pre>
     */
    public void generateStream(dev.modelwire.v1.ModelRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.ModelOutput> responseObserver) {
      io.grpc.stub.ClientCalls.asyncServerStreamingCall(
          getChannel().newCall(getGenerateStreamMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * CountToken counts the tokens of a prompt or of chat messages with the model's tokenizer.
     * </pre>
     */
    public void countToken(dev.modelwire.v1.CountTokenRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.CountTokenResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getCountTokenMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * ListModels describes every model this worker serves.
     * </pre>
     */
    public void listModels(dev.modelwire.v1.ListModelsRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.ListModelsResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getListModelsMethod(), getCallOptions()), request, responseObserver);
    }
  }

  /**
   * A stub to allow clients to do synchronous rpc calls to service ModelWorker.
   * <pre>
   * ModelWorker serves generation and token counting for the models a worker is configured with.
   * </pre>
   */
  public static final class ModelWorkerBlockingV2Stub
      extends io.grpc.stub.AbstractBlockingStub<ModelWorkerBlockingV2Stub> {
    private ModelWorkerBlockingV2Stub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ModelWorkerBlockingV2Stub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ModelWorkerBlockingV2Stub(channel, callOptions);
    }

    /**
     * <pre>
     * Generate returns the whole completion in one message.
     * </pre>
     */
    public dev.modelwire.v1.ModelOutput generate(dev.modelwire.v1.ModelRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getGenerateMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * GenerateStream returns the completion as deltas; the last message carries finish_reason and usage.
     * </pre>
     */
    @io.grpc.ExperimentalApi("https://github.com/grpc/grpc-java/issues/10918")
    public io.grpc.stub.BlockingClientCall<?, dev.modelwire.v1.ModelOutput>
        generateStream(dev.modelwire.v1.ModelRequest request) {
      return io.grpc.stub.ClientCalls.blockingV2ServerStreamingCall(
          getChannel(), getGenerateStreamMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * CountToken counts the tokens of a prompt or of chat messages with the model's tokenizer.
     * </pre>
     */
    public dev.modelwire.v1.CountTokenResponse countToken(dev.modelwire.v1.CountTokenRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getCountTokenMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * ListModels describes every model this worker serves.
     * </pre>
     */
    public dev.modelwire.v1.ListModelsResponse listModels(dev.modelwire.v1.ListModelsRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getListModelsMethod(), getCallOptions(), request);
    }
  }

  /**
   * A stub to allow clients to do limited synchronous rpc calls to service ModelWorker.
   * <pre>
   * ModelWorker serves generation and token counting for the models a worker is configured with.
   * </pre>
   */
  public static final class ModelWorkerBlockingStub
      extends io.grpc.stub.AbstractBlockingStub<ModelWorkerBlockingStub> {
    private ModelWorkerBlockingStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ModelWorkerBlockingStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ModelWorkerBlockingStub(channel, callOptions);
    }

    /**
     * <pre>
     * Generate returns the whole completion in one message.
     * </pre>
     */
    public dev.modelwire.v1.ModelOutput generate(dev.modelwire.v1.ModelRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getGenerateMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * GenerateStream returns the completion as deltas; the last message carries finish_reason and usage.
     * </pre>
     */
    public java.util.Iterator<dev.modelwire.v1.ModelOutput> generateStream(
        dev.modelwire.v1.ModelRequest request) {
      return io.grpc.stub.ClientCalls.blockingServerStreamingCall(
          getChannel(), getGenerateStreamMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * CountToken counts the tokens of a prompt or of chat messages with the model's tokenizer.
     * </pre>
     */
    public dev.modelwire.v1.CountTokenResponse countToken(dev.modelwire.v1.CountTokenRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getCountTokenMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * ListModels describes every model this worker serves.
     * </pre>
     */
    public dev.modelwire.v1.ListModelsResponse listModels(dev.modelwire.v1.ListModelsRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getListModelsMethod(), getCallOptions(), request);
    }
  }

  /**
   * A stub to allow clients to do ListenableFuture-style rpc calls to service ModelWorker.
   * <pre>
   * ModelWorker serves generation and token counting for the models a worker is configured with.
   * </pre>
   */
  public static final class ModelWorkerFutureStub
      extends io.grpc.stub.AbstractFutureStub<ModelWorkerFutureStub> {
    private ModelWorkerFutureStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ModelWorkerFutureStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ModelWorkerFutureStub(channel, callOptions);
    }

    /**
     * <pre>
     * Generate returns the whole completion in one message.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.modelwire.v1.ModelOutput> generate(
        dev.modelwire.v1.ModelRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getGenerateMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * CountToken counts the tokens of a prompt or of chat messages with the model's tokenizer.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.modelwire.v1.CountTokenResponse> countToken(
        dev.modelwire.v1.CountTokenRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getCountTokenMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * ListModels describes every model this worker serves.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.modelwire.v1.ListModelsResponse> listModels(
        dev.modelwire.v1.ListModelsRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getListModelsMethod(), getCallOptions()), request);
    }
  }

  private static final int METHODID_GENERATE = 0;
  private static final int METHODID_GENERATE_STREAM = 1;
  private static final int METHODID_COUNT_TOKEN = 2;
  private static final int METHODID_LIST_MODELS = 3;

  private static final class MethodHandlers<Req, Resp> implements
      io.grpc.stub.ServerCalls.UnaryMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.ServerStreamingMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.ClientStreamingMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.BidiStreamingMethod<Req, Resp> {
    private final AsyncService serviceImpl;
    private final int methodId;

    MethodHandlers(AsyncService serviceImpl, int methodId) {
      this.serviceImpl = serviceImpl;
      this.methodId = methodId;
    }

    @java.lang.Override
    @java.lang.SuppressWarnings("unchecked")
    public void invoke(Req request, io.grpc.stub.StreamObserver<Resp> responseObserver) {
      switch (methodId) {
        case METHODID_GENERATE:
          serviceImpl.generate((dev.modelwire.v1.ModelRequest) request,
              (io.grpc.stub.StreamObserver<dev.modelwire.v1.ModelOutput>) responseObserver);
          break;
        case METHODID_GENERATE_STREAM:
          serviceImpl.generateStream((dev.modelwire.v1.ModelRequest) request,
              (io.grpc.stub.StreamObserver<dev.modelwire.v1.ModelOutput>) responseObserver);
          break;
        case METHODID_COUNT_TOKEN:
          serviceImpl.countToken((dev.modelwire.v1.CountTokenRequest) request,
              (io.grpc.stub.StreamObserver<dev.modelwire.v1.CountTokenResponse>) responseObserver);
          break;
        case METHODID_LIST_MODELS:
          serviceImpl.listModels((dev.modelwire.v1.ListModelsRequest) request,
              (io.grpc.stub.StreamObserver<dev.modelwire.v1.ListModelsResponse>) responseObserver);
          break;
        default:
          throw new AssertionError();
      }
    }

    @java.lang.Override
    @java.lang.SuppressWarnings("unchecked")
    public io.grpc.stub.StreamObserver<Req> invoke(
        io.grpc.stub.StreamObserver<Resp> responseObserver) {
      switch (methodId) {
        default:
          throw new AssertionError();
      }
    }
  }

  public static final io.grpc.ServerServiceDefinition bindService(AsyncService service) {
    return io.grpc.ServerServiceDefinition.builder(getServiceDescriptor())
        .addMethod(
          getGenerateMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.modelwire.v1.ModelRequest,
              dev.modelwire.v1.ModelOutput>(
                service, METHODID_GENERATE)))
        .addMethod(
          getGenerateStreamMethod(),
          io.grpc.stub.ServerCalls.asyncServerStreamingCall(
            new MethodHandlers<
              dev.modelwire.v1.ModelRequest,
              dev.modelwire.v1.ModelOutput>(
                service, METHODID_GENERATE_STREAM)))
        .addMethod(
          getCountTokenMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.modelwire.v1.CountTokenRequest,
              dev.modelwire.v1.CountTokenResponse>(
                service, METHODID_COUNT_TOKEN)))
        .addMethod(
          getListModelsMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.modelwire.v1.ListModelsRequest,
              dev.modelwire.v1.ListModelsResponse>(
                service, METHODID_LIST_MODELS)))
        .build();
  }

  private static abstract class ModelWorkerBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoFileDescriptorSupplier, io.grpc.protobuf.ProtoServiceDescriptorSupplier {
    ModelWorkerBaseDescriptorSupplier() {}

    @java.lang.Override
    public com.google.protobuf.Descriptors.FileDescriptor getFileDescriptor() {
      return dev.modelwire.v1.WorkerProto.getDescriptor();
    }

    @java.lang.Override
    public com.google.protobuf.Descriptors.ServiceDescriptor getServiceDescriptor() {
      return getFileDescriptor().findServiceByName("ModelWorker");
    }
  }

  private static final class ModelWorkerFileDescriptorSupplier
      extends ModelWorkerBaseDescriptorSupplier {
    ModelWorkerFileDescriptorSupplier() {}
  }

  private static final class ModelWorkerMethodDescriptorSupplier
      extends ModelWorkerBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoMethodDescriptorSupplier {
    private final java.lang.String methodName;

    ModelWorkerMethodDescriptorSupplier(java.lang.String methodName) {
      this.methodName = methodName;
    }

    @java.lang.Override
    public com.google.protobuf.Descriptors.MethodDescriptor getMethodDescriptor() {
      return getServiceDescriptor().findMethodByName(methodName);
    }
  }

  private static volatile io.grpc.ServiceDescriptor serviceDescriptor;

  public static io.grpc.ServiceDescriptor getServiceDescriptor() {
    io.grpc.ServiceDescriptor result = serviceDescriptor;
    if (result == null) {
      synchronized (ModelWorkerGrpc.class) {
        result = serviceDescriptor;
        if (result == null) {
          serviceDescriptor = result = io.grpc.ServiceDescriptor.newBuilder(SERVICE_NAME)
              .setSchemaDescriptor(new ModelWorkerFileDescriptorSupplier())
              .addMethod(getGenerateMethod())
              .addMethod(getGenerateStreamMethod())
              .addMethod(getCountTokenMethod())
              .addMethod(getListModelsMethod())
              .build();
        }
      }
    }
    return result;
  }
}
