package dev.modelwire.v1;

import static io.grpc.MethodDescriptor.generateFullMethodName;

/**
 * <pre>
 * ModelController keeps the registry of worker instances: which instance serves which models, where it
 * listens, and how loaded it is. An instance whose heartbeats stop is removed once its lease TTL lapses.
 * </pre>
 */
@io.grpc.stub.annotations.GrpcGenerated
public final class ModelControllerGrpc {

  private ModelControllerGrpc() {}

  public static final java.lang.String SERVICE_NAME = "modelwire.v1.ModelController";

  // Static method descriptors that strictly reflect the proto.
  private static volatile io.grpc.MethodDescriptor<dev.modelwire.v1.RegisterInstanceRequest,
      dev.modelwire.v1.RegisterInstanceResponse> getRegisterInstanceMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "RegisterInstance",
      requestType = dev.modelwire.v1.RegisterInstanceRequest.class,
      responseType = dev.modelwire.v1.RegisterInstanceResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.modelwire.v1.RegisterInstanceRequest,
      dev.modelwire.v1.RegisterInstanceResponse> getRegisterInstanceMethod() {
    io.grpc.MethodDescriptor<dev.modelwire.v1.RegisterInstanceRequest, dev.modelwire.v1.RegisterInstanceResponse> getRegisterInstanceMethod;
    if ((getRegisterInstanceMethod = ModelControllerGrpc.getRegisterInstanceMethod) == null) {
      synchronized (ModelControllerGrpc.class) {
        if ((getRegisterInstanceMethod = ModelControllerGrpc.getRegisterInstanceMethod) == null) {
          ModelControllerGrpc.getRegisterInstanceMethod = getRegisterInstanceMethod =
              io.grpc.MethodDescriptor.<dev.modelwire.v1.RegisterInstanceRequest, dev.modelwire.v1.RegisterInstanceResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "RegisterInstance"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.RegisterInstanceRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.RegisterInstanceResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelControllerMethodDescriptorSupplier("RegisterInstance"))
              .build();
        }
      }
    }
    return getRegisterInstanceMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.modelwire.v1.HeartbeatRequest,
      dev.modelwire.v1.HeartbeatResponse> getHeartbeatMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "Heartbeat",
      requestType = dev.modelwire.v1.HeartbeatRequest.class,
      responseType = dev.modelwire.v1.HeartbeatResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.modelwire.v1.HeartbeatRequest,
      dev.modelwire.v1.HeartbeatResponse> getHeartbeatMethod() {
    io.grpc.MethodDescriptor<dev.modelwire.v1.HeartbeatRequest, dev.modelwire.v1.HeartbeatResponse> getHeartbeatMethod;
    if ((getHeartbeatMethod = ModelControllerGrpc.getHeartbeatMethod) == null) {
      synchronized (ModelControllerGrpc.class) {
        if ((getHeartbeatMethod = ModelControllerGrpc.getHeartbeatMethod) == null) {
          ModelControllerGrpc.getHeartbeatMethod = getHeartbeatMethod =
              io.grpc.MethodDescriptor.<dev.modelwire.v1.HeartbeatRequest, dev.modelwire.v1.HeartbeatResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "Heartbeat"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.HeartbeatRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.HeartbeatResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelControllerMethodDescriptorSupplier("Heartbeat"))
              .build();
        }
      }
    }
    return getHeartbeatMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.modelwire.v1.DeregisterInstanceRequest,
      dev.modelwire.v1.DeregisterInstanceResponse> getDeregisterInstanceMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "DeregisterInstance",
      requestType = dev.modelwire.v1.DeregisterInstanceRequest.class,
      responseType = dev.modelwire.v1.DeregisterInstanceResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.modelwire.v1.DeregisterInstanceRequest,
      dev.modelwire.v1.DeregisterInstanceResponse> getDeregisterInstanceMethod() {
    io.grpc.MethodDescriptor<dev.modelwire.v1.DeregisterInstanceRequest, dev.modelwire.v1.DeregisterInstanceResponse> getDeregisterInstanceMethod;
    if ((getDeregisterInstanceMethod = ModelControllerGrpc.getDeregisterInstanceMethod) == null) {
      synchronized (ModelControllerGrpc.class) {
        if ((getDeregisterInstanceMethod = ModelControllerGrpc.getDeregisterInstanceMethod) == null) {
          ModelControllerGrpc.getDeregisterInstanceMethod = getDeregisterInstanceMethod =
              io.grpc.MethodDescriptor.<dev.modelwire.v1.DeregisterInstanceRequest, dev.modelwire.v1.DeregisterInstanceResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "DeregisterInstance"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.DeregisterInstanceRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.DeregisterInstanceResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelControllerMethodDescriptorSupplier("DeregisterInstance"))
              .build();
        }
      }
    }
    return getDeregisterInstanceMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.modelwire.v1.ListInstancesRequest,
      dev.modelwire.v1.ListInstancesResponse> getListInstancesMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "ListInstances",
      requestType = dev.modelwire.v1.ListInstancesRequest.class,
      responseType = dev.modelwire.v1.ListInstancesResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.modelwire.v1.ListInstancesRequest,
      dev.modelwire.v1.ListInstancesResponse> getListInstancesMethod() {
    io.grpc.MethodDescriptor<dev.modelwire.v1.ListInstancesRequest, dev.modelwire.v1.ListInstancesResponse> getListInstancesMethod;
    if ((getListInstancesMethod = ModelControllerGrpc.getListInstancesMethod) == null) {
      synchronized (ModelControllerGrpc.class) {
        if ((getListInstancesMethod = ModelControllerGrpc.getListInstancesMethod) == null) {
          ModelControllerGrpc.getListInstancesMethod = getListInstancesMethod =
              io.grpc.MethodDescriptor.<dev.modelwire.v1.ListInstancesRequest, dev.modelwire.v1.ListInstancesResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "ListInstances"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.ListInstancesRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.ListInstancesResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelControllerMethodDescriptorSupplier("ListInstances"))
              .build();
        }
      }
    }
    return getListInstancesMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.modelwire.v1.WatchInstancesRequest,
      dev.modelwire.v1.WatchInstancesResponse> getWatchInstancesMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "WatchInstances",
      requestType = dev.modelwire.v1.WatchInstancesRequest.class,
      responseType = dev.modelwire.v1.WatchInstancesResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.SERVER_STREAMING)
  public static io.grpc.MethodDescriptor<dev.modelwire.v1.WatchInstancesRequest,
      dev.modelwire.v1.WatchInstancesResponse> getWatchInstancesMethod() {
    io.grpc.MethodDescriptor<dev.modelwire.v1.WatchInstancesRequest, dev.modelwire.v1.WatchInstancesResponse> getWatchInstancesMethod;
    if ((getWatchInstancesMethod = ModelControllerGrpc.getWatchInstancesMethod) == null) {
      synchronized (ModelControllerGrpc.class) {
        if ((getWatchInstancesMethod = ModelControllerGrpc.getWatchInstancesMethod) == null) {
          ModelControllerGrpc.getWatchInstancesMethod = getWatchInstancesMethod =
              io.grpc.MethodDescriptor.<dev.modelwire.v1.WatchInstancesRequest, dev.modelwire.v1.WatchInstancesResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.SERVER_STREAMING)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "WatchInstances"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.WatchInstancesRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.modelwire.v1.WatchInstancesResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ModelControllerMethodDescriptorSupplier("WatchInstances"))
              .build();
        }
      }
    }
    return getWatchInstancesMethod;
  }

  /**
   * Creates a new async stub that supports all call types for the service
   */
  public static ModelControllerStub newStub(io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ModelControllerStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ModelControllerStub>() {
        @java.lang.Override
        public ModelControllerStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ModelControllerStub(channel, callOptions);
        }
      };
    return ModelControllerStub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports all types of calls on the service
   */
  public static ModelControllerBlockingV2Stub newBlockingV2Stub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ModelControllerBlockingV2Stub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ModelControllerBlockingV2Stub>() {
        @java.lang.Override
        public ModelControllerBlockingV2Stub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ModelControllerBlockingV2Stub(channel, callOptions);
        }
      };
    return ModelControllerBlockingV2Stub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports unary and streaming output calls on the service
   */
  public static ModelControllerBlockingStub newBlockingStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ModelControllerBlockingStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ModelControllerBlockingStub>() {
        @java.lang.Override
        public ModelControllerBlockingStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ModelControllerBlockingStub(channel, callOptions);
        }
      };
    return ModelControllerBlockingStub.newStub(factory, channel);
  }

  /**
   * Creates a new ListenableFuture-style stub that supports unary calls on the service
   */
  public static ModelControllerFutureStub newFutureStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ModelControllerFutureStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ModelControllerFutureStub>() {
        @java.lang.Override
        public ModelControllerFutureStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ModelControllerFutureStub(channel, callOptions);
        }
      };
    return ModelControllerFutureStub.newStub(factory, channel);
  }

  /**
   * <pre>
   * ModelController keeps the registry of worker instances: which instance serves which models, where it
   * listens, and how loaded it is. An instance whose heartbeats stop is removed once its lease TTL lapses.
   * </pre>
   */
  public interface AsyncService {

    /**
     * <pre>
     * RegisterInstance adds (or replaces) an instance and returns its id, lease TTL and heartbeat interval.
     * </pre>
     */
    default void registerInstance(dev.modelwire.v1.RegisterInstanceRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.RegisterInstanceResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getRegisterInstanceMethod(), responseObserver);
    }

    /**
     * <pre>
     * Heartbeat renews an instance's lease and reports its live load; UNKNOWN_INSTANCE asks it to register again.
     * </pre>
     */
    default void heartbeat(dev.modelwire.v1.HeartbeatRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.HeartbeatResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getHeartbeatMethod(), responseObserver);
    }

    /**
     * <pre>
     * DeregisterInstance removes an instance at once (graceful shutdown); watchers see it removed.
     * </pre>
     */
    default void deregisterInstance(dev.modelwire.v1.DeregisterInstanceRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.DeregisterInstanceResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getDeregisterInstanceMethod(), responseObserver);
    }

    /**
     * <pre>
     * ListInstances returns the instances of one model, or of every model.
     * </pre>
     */
    default void listInstances(dev.modelwire.v1.ListInstancesRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.ListInstancesResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getListInstancesMethod(), responseObserver);
    }

    /**
     * <pre>
     * WatchInstances streams a snapshot of the instances, then every addition, update and removal.
     * </pre>
     */
    default void watchInstances(dev.modelwire.v1.WatchInstancesRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.WatchInstancesResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getWatchInstancesMethod(), responseObserver);
    }
  }

  /**
   * Base class for the server implementation of the service ModelController.
   * <pre>
   * ModelController keeps the registry of worker instances: which instance serves which models, where it
   * listens, and how loaded it is. An instance whose heartbeats stop is removed once its lease TTL lapses.
   * </pre>
   */
  public static abstract class ModelControllerImplBase
      implements io.grpc.BindableService, AsyncService {

    @java.lang.Override public final io.grpc.ServerServiceDefinition bindService() {
      return ModelControllerGrpc.bindService(this);
    }
  }

  /**
   * A stub to allow clients to do asynchronous rpc calls to service ModelController.
   * <pre>
   * ModelController keeps the registry of worker instances: which instance serves which models, where it
   * listens, and how loaded it is. An instance whose heartbeats stop is removed once its lease TTL lapses.
   * </pre>
   */
  public static final class ModelControllerStub
      extends io.grpc.stub.AbstractAsyncStub<ModelControllerStub> {
    private ModelControllerStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ModelControllerStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ModelControllerStub(channel, callOptions);
    }

    /**
     * <pre>
     * RegisterInstance adds (or replaces) an instance and returns its id, lease TTL and heartbeat interval.
     * </pre>
     */
    public void registerInstance(dev.modelwire.v1.RegisterInstanceRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.RegisterInstanceResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getRegisterInstanceMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * Heartbeat renews an instance's lease and reports its live load; UNKNOWN_INSTANCE asks it to register again.
     * </pre>
     */
    public void heartbeat(dev.modelwire.v1.HeartbeatRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.HeartbeatResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getHeartbeatMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * DeregisterInstance removes an instance at once (graceful shutdown); watchers see it removed.
     * </pre>
     */
    public void deregisterInstance(dev.modelwire.v1.DeregisterInstanceRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.DeregisterInstanceResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getDeregisterInstanceMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * ListInstances returns the instances of one model, or of every model.
     * </pre>
     */
    public void listInstances(dev.modelwire.v1.ListInstancesRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.ListInstancesResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getListInstancesMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * WatchInstances streams a snapshot of the instances, then every addition, update and removal.
     * </pre>
     */
    public void watchInstances(dev.modelwire.v1.WatchInstancesRequest request,
        io.grpc.stub.StreamObserver<dev.modelwire.v1.WatchInstancesResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncServerStreamingCall(
          getChannel().newCall(getWatchInstancesMethod(), getCallOptions()), request, responseObserver);
    }
  }

  /**
   * A stub to allow clients to do synchronous rpc calls to service ModelController.
   * <pre>
   * ModelController keeps the registry of worker instances: which instance serves which models, where it
   * listens, and how loaded it is. An instance whose heartbeats stop is removed once its lease TTL lapses.
   * </pre>
   */
  public static final class ModelControllerBlockingV2Stub
      extends io.grpc.stub.AbstractBlockingStub<ModelControllerBlockingV2Stub> {
    private ModelControllerBlockingV2Stub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ModelControllerBlockingV2Stub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ModelControllerBlockingV2Stub(channel, callOptions);
    }

    /**
     * <pre>
     * RegisterInstance adds (or replaces) an instance and returns its id, lease TTL and heartbeat interval.
     * </pre>
     */
    public dev.modelwire.v1.RegisterInstanceResponse registerInstance(dev.modelwire.v1.RegisterInstanceRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getRegisterInstanceMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Heartbeat renews an instance's lease and reports its live load; UNKNOWN_INSTANCE asks it to register again.
     * </pre>
     */
    public dev.modelwire.v1.HeartbeatResponse heartbeat(dev.modelwire.v1.HeartbeatRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getHeartbeatMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * DeregisterInstance removes an instance at once (graceful shutdown); watchers see it removed.
     * </pre>
     */
    public dev.modelwire.v1.DeregisterInstanceResponse deregisterInstance(dev.modelwire.v1.DeregisterInstanceRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getDeregisterInstanceMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * ListInstances returns the instances of one model, or of every model.
     * </pre>
     */
    public dev.modelwire.v1.ListInstancesResponse listInstances(dev.modelwire.v1.ListInstancesRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getListInstancesMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * WatchInstances streams a snapshot of the instances, then every addition, update and removal.
     * </pre>
     */
    @io.grpc.ExperimentalApi("https://github.com/grpc/grpc-java/issues/10918")
    public io.grpc.stub.BlockingClientCall<?, dev.modelwire.v1.WatchInstancesResponse>
        watchInstances(dev.modelwire.v1.WatchInstancesRequest request) {
      return io.grpc.stub.ClientCalls.blockingV2ServerStreamingCall(
          getChannel(), getWatchInstancesMethod(), getCallOptions(), request);
    }
  }

  /**
   * A stub to allow clients to do limited synchronous rpc calls to service ModelController.
   * <pre>
   * ModelController keeps the registry of worker instances: which instance serves which models, where it
   * listens, and how loaded it is. An instance whose heartbeats stop is removed once its lease TTL lapses.
   * </pre>
   */
  public static final class ModelControllerBlockingStub
      extends io.grpc.stub.AbstractBlockingStub<ModelControllerBlockingStub> {
    private ModelControllerBlockingStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ModelControllerBlockingStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ModelControllerBlockingStub(channel, callOptions);
    }

    /**
     * <pre>
     * RegisterInstance adds (or replaces) an instance and returns its id, lease TTL and heartbeat interval.
     * </pre>
     */
    public dev.modelwire.v1.RegisterInstanceResponse registerInstance(dev.modelwire.v1.RegisterInstanceRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getRegisterInstanceMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Heartbeat renews an instance's lease and reports its live load; UNKNOWN_INSTANCE asks it to register again.
     * </pre>
     */
    public dev.modelwire.v1.HeartbeatResponse heartbeat(dev.modelwire.v1.HeartbeatRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getHeartbeatMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * DeregisterInstance removes an instance at once (graceful shutdown); watchers see it removed.
     * </pre>
     */
    public dev.modelwire.v1.DeregisterInstanceResponse deregisterInstance(dev.modelwire.v1.DeregisterInstanceRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getDeregisterInstanceMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * ListInstances returns the instances of one model, or of every model.
     * </pre>
     */
    public dev.modelwire.v1.ListInstancesResponse listInstances(dev.modelwire.v1.ListInstancesRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getListInstancesMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * WatchInstances streams a snapshot of the instances, then every addition, update and removal.
     * </pre>
     */
    public java.util.Iterator<dev.modelwire.v1.WatchInstancesResponse> watchInstances(
        dev.modelwire.v1.WatchInstancesRequest request) {
      return io.grpc.stub.ClientCalls.blockingServerStreamingCall(
          getChannel(), getWatchInstancesMethod(), getCallOptions(), request);
    }
  }

  /**
   * A stub to allow clients to do ListenableFuture-style rpc calls to service ModelController.
   * <pre>
   * ModelController keeps the registry of worker instances: which instance serves which models, where it
   * listens, and how loaded it is. An instance whose heartbeats stop is removed once its lease TTL lapses.
   * </pre>
   */
  public static final class ModelControllerFutureStub
      extends io.grpc.stub.AbstractFutureStub<ModelControllerFutureStub> {
    private ModelControllerFutureStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ModelControllerFutureStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ModelControllerFutureStub(channel, callOptions);
    }

    /**
     * <pre>
     * RegisterInstance adds (or replaces) an instance and returns its id, lease TTL and heartbeat interval.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.modelwire.v1.RegisterInstanceResponse> registerInstance(
        dev.modelwire.v1.RegisterInstanceRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getRegisterInstanceMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * Heartbeat renews an instance's lease and reports its live load; UNKNOWN_INSTANCE asks it to register again.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.modelwire.v1.HeartbeatResponse> heartbeat(
        dev.modelwire.v1.HeartbeatRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getHeartbeatMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * DeregisterInstance removes an instance at once (graceful shutdown); watchers see it removed.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.modelwire.v1.DeregisterInstanceResponse> deregisterInstance(
        dev.modelwire.v1.DeregisterInstanceRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getDeregisterInstanceMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * ListInstances returns the instances of one model, or of every model.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.modelwire.v1.ListInstancesResponse> listInstances(
        dev.modelwire.v1.ListInstancesRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getListInstancesMethod(), getCallOptions()), request);
    }
  }

  private static final int METHODID_REGISTER_INSTANCE = 0;
  private static final int METHODID_HEARTBEAT = 1;
  private static final int METHODID_DEREGISTER_INSTANCE = 2;
  private static final int METHODID_LIST_INSTANCES = 3;
  private static final int METHODID_WATCH_INSTANCES = 4;

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
        case METHODID_REGISTER_INSTANCE:
          serviceImpl.registerInstance((dev.modelwire.v1.RegisterInstanceRequest) request,
              (io.grpc.stub.StreamObserver<dev.modelwire.v1.RegisterInstanceResponse>) responseObserver);
          break;
        case METHODID_HEARTBEAT:
          serviceImpl.heartbeat((dev.modelwire.v1.HeartbeatRequest) request,
              (io.grpc.stub.StreamObserver<dev.modelwire.v1.HeartbeatResponse>) responseObserver);
          break;
        case METHODID_DEREGISTER_INSTANCE:
          serviceImpl.deregisterInstance((dev.modelwire.v1.DeregisterInstanceRequest) request,
              (io.grpc.stub.StreamObserver<dev.modelwire.v1.DeregisterInstanceResponse>) responseObserver);
          break;
        case METHODID_LIST_INSTANCES:
          serviceImpl.listInstances((dev.modelwire.v1.ListInstancesRequest) request,
              (io.grpc.stub.StreamObserver<dev.modelwire.v1.ListInstancesResponse>) responseObserver);
          break;
        case METHODID_WATCH_INSTANCES:
          serviceImpl.watchInstances((dev.modelwire.v1.WatchInstancesRequest) request,
              (io.grpc.stub.StreamObserver<dev.modelwire.v1.WatchInstancesResponse>) responseObserver);
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
          getRegisterInstanceMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.modelwire.v1.RegisterInstanceRequest,
              dev.modelwire.v1.RegisterInstanceResponse>(
                service, METHODID_REGISTER_INSTANCE)))
        .addMethod(
          getHeartbeatMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.modelwire.v1.HeartbeatRequest,
              dev.modelwire.v1.HeartbeatResponse>(
                service, METHODID_HEARTBEAT)))
        .addMethod(
          getDeregisterInstanceMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.modelwire.v1.DeregisterInstanceRequest,
              dev.modelwire.v1.DeregisterInstanceResponse>(
                service, METHODID_DEREGISTER_INSTANCE)))
        .addMethod(
          getListInstancesMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.modelwire.v1.ListInstancesRequest,
              dev.modelwire.v1.ListInstancesResponse>(
                service, METHODID_LIST_INSTANCES)))
        .addMethod(
          getWatchInstancesMethod(),
          io.grpc.stub.ServerCalls.asyncServerStreamingCall(
            new MethodHandlers<
              dev.modelwire.v1.WatchInstancesRequest,
              dev.modelwire.v1.WatchInstancesResponse>(
                service, METHODID_WATCH_INSTANCES)))
        .build();
  }

  private static abstract class ModelControllerBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoFileDescriptorSupplier, io.grpc.protobuf.ProtoServiceDescriptorSupplier {
    ModelControllerBaseDescriptorSupplier() {}

    @java.lang.Override
    public com.google.protobuf.Descriptors.FileDescriptor getFileDescriptor() {
      return dev.modelwire.v1.ControllerProto.getDescriptor();
    }

    @java.lang.Override
    public com.google.protobuf.Descriptors.ServiceDescriptor getServiceDescriptor() {
      return getFileDescriptor().findServiceByName("ModelController");
    }
  }

  private static final class ModelControllerFileDescriptorSupplier
      extends ModelControllerBaseDescriptorSupplier {
    ModelControllerFileDescriptorSupplier() {}
  }

  private static final class ModelControllerMethodDescriptorSupplier
      extends ModelControllerBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoMethodDescriptorSupplier {
    private final java.lang.String methodName;

    ModelControllerMethodDescriptorSupplier(java.lang.String methodName) {
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
      synchronized (ModelControllerGrpc.class) {
        result = serviceDescriptor;
        if (result == null) {
          serviceDescriptor = result = io.grpc.ServiceDescriptor.newBuilder(SERVICE_NAME)
              .setSchemaDescriptor(new ModelControllerFileDescriptorSupplier())
              .addMethod(getRegisterInstanceMethod())
              .addMethod(getHeartbeatMethod())
              .addMethod(getDeregisterInstanceMethod())
              .addMethod(getListInstancesMethod())
              .addMethod(getWatchInstancesMethod())
              .build();
        }
      }
    }
    return result;
  }
}
