import Logging
import VhostProtocol
import VhostSystem
import VhostTransport

/// Settings for a front-end connection.
public struct FrontendConfiguration: Sendable {
  /// How long any reply may take before the request fails with a timeout.
  public var timeoutMilliseconds: Int = 5000
  /// Protocol features this front-end is willing to use; the back-end's offer is masked by it.
  public var supportedProtocolFeatures: ProtocolFeatures = FrontendConfiguration.defaultProtocolFeatures
  /// Serve a back-end channel (SET_BACKEND_REQ_FD) when BACKEND_REQ is negotiated.
  public var serveBackendChannel = true
  public var logger: Logger = {
    var l = Logger(label: "vhost-user.frontend")
    l.logLevel = .warning
    return l
  }()

  public init() {}

  /// Everything this front-end implements.
  public static let defaultProtocolFeatures: ProtocolFeatures = [
    .mq, .logShmfd, .rarp, .replyAck, .mtu, .backendReq, .config, .backendSendFD, .inflightShmfd,
    .resetDevice, .configureMemSlots, .status, .sharedObject, .deviceState,
  ]
}

/// The state one connection negotiated; shared by all device views on it.
public struct NegotiatedState: Sendable {
  /// Virtio features the back-end offered (GET_FEATURES).
  public var backendFeatures: VirtioFeatures = []
  /// Virtio features acknowledged with SET_FEATURES.
  public var ackedFeatures: VirtioFeatures = []
  /// The back-end's protocol feature offer (GET_PROTOCOL_FEATURES), unmasked.
  public var backendProtocolFeatures: ProtocolFeatures = []
  /// Protocol features in force: the offer masked by what this front-end supports.
  public var protocolFeatures: ProtocolFeatures = []
  /// GET_QUEUE_NUM answer (MQ), else nil.
  public var maxQueues: UInt64?
  /// GET_MAX_MEM_SLOTS answer (CONFIGURE_MEM_SLOTS), else nil.
  public var maxMemSlots: UInt64?
  /// Why live migration is blocked, if it is (no LOG_SHMFD).
  public var migrationBlocker: String?

  /// Whether virtio bit 30 (VHOST_USER_F_PROTOCOL_FEATURES) was offered.
  public var protocolFeaturesEnabled: Bool { backendFeatures.contains(.protocolFeatures) }
}

/// One vhost-user connection to a back-end: the socket, the lock that keeps each request and its
/// reply together, what was negotiated, and the back-end channel if one was set up. Device views
/// (`VhostUserFrontend`) share it.
public final class VhostUserConnection: @unchecked Sendable {
  public let channel: MessageChannel
  public let configuration: FrontendConfiguration
  /// Guards the negotiated state (short critical sections only).
  let lock = Lock()
  /// Keeps each request and its reply together; never taken while `lock` is held.
  let requestLock = Lock()
  private var _state = NegotiatedState()
  /// Set once a request failed on the wire: the stream may be out of step, so the connection is
  /// shut down and every later request fails at once (the spec: a front-end that gets no valid
  /// reply closes the connection).
  private var broken = false
  private(set) var backendChannel: BackendChannelServer?
  /// Regions currently known to the back-end (for ADD/REM_MEM_REG updates).
  var installedRegions: [GuestRegion] = []

  public init(socket: UnixSocket, configuration: FrontendConfiguration = FrontendConfiguration()) {
    ignoreSIGPIPE()
    channel = MessageChannel(socket: socket, timeoutMilliseconds: configuration.timeoutMilliseconds)
    self.configuration = configuration
  }

  /// Connects to the back-end listening at `path`, retrying while the socket is not yet there.
  public static func connect(
    path: String, configuration: FrontendConfiguration = FrontendConfiguration(),
    retryMilliseconds: Int = 0
  ) throws(FrontendError) -> VhostUserConnection {
    do {
      let socket = try UnixSocket.connect(to: path, retryingFor: retryMilliseconds)
      return VhostUserConnection(socket: socket, configuration: configuration)
    } catch {
      throw .system(error)
    }
  }

  deinit { close() }

  /// Shuts the connection (and the back-end channel) down.
  public func close() {
    channel.socket.shutdown()
    backendChannel?.stop()
  }

  public var state: NegotiatedState {
    lock.lock()
    defer { lock.unlock() }
    return _state
  }

  func updateState(_ body: (inout NegotiatedState) -> Void) {
    lock.lock()
    defer { lock.unlock() }
    body(&_state)
  }

  func attach(backendChannel: BackendChannelServer) { self.backendChannel = backendChannel }

  /// The view for the queues starting at `firstQueueIndex` (0 for the first or only one).
  public func device(firstQueueIndex: UInt32 = 0) -> VhostUserFrontend {
    VhostUserFrontend(connection: self, firstQueueIndex: firstQueueIndex)
  }

  /// Sends `request`, then reads what it answers: its explicit reply, or the REPLY_ACK u64 when
  /// `NEED_REPLY` was set. Checks the request's gate first; nothing is sent when it is closed.
  @discardableResult
  func perform(
    _ request: FrontendRequest, payload: Payload = .empty, fds: [OwnedFD] = [],
    expectReply: Bool? = nil
  ) throws(FrontendError) -> Received<FrontendRequest>? {
    let current = state
    try check(gate: RequestGate.gate(for: request), request: request, state: current)
    let hasExplicitReply = expectReply ?? (request.replyLayout != nil)
    let ack = !hasExplicitReply && current.protocolFeatures.contains(.replyAck)
    var flags: HeaderFlags = .version1
    if ack { flags.insert(.needReply) }
    requestLock.lock()
    defer { requestLock.unlock() }
    if lock.withLock({ broken }) { throw .channel(.transport(.disconnected)) }
    configuration.logger.trace("-> \(request.name) \(payload)")
    do {
      try channel.send(Message(request, flags: flags, payload: payload), fds: fds)
      if hasExplicitReply {
        let reply = try channel.receiveReply(to: request)
        return reply
      }
      if ack {
        let reply = try channel.receiveReply(to: request)
        guard case .u64(let status) = reply.message.payload else {
          throw FrontendError.invalidReply(request: request.name, reason: "REPLY_ACK without a u64")
        }
        guard status == 0 else { throw FrontendError.refused(request: request.name, status: status) }
      }
      return nil
    } catch let error as FrontendError {
      throw error
    } catch let error as ChannelError {
      lock.withLock { broken = true }
      channel.socket.shutdown()
      throw .channel(error)
    } catch {
      throw .invalidArgument("\(error)")
    }
  }

  private func check(gate: RequestGate, request: FrontendRequest, state: NegotiatedState) throws(FrontendError) {
    switch gate {
    case .none: return
    case .protocolFeaturesBit:
      guard state.protocolFeaturesEnabled else {
        throw .notNegotiated(request: request.name, feature: "VHOST_USER_F_PROTOCOL_FEATURES (virtio bit 30)")
      }
    case .protocolFeature(let f):
      guard state.protocolFeatures.contains(f) else {
        throw .notNegotiated(request: request.name, feature: "VHOST_USER_PROTOCOL_F_" + f.names.joined())
      }
    case .ackedVirtioFeature(let f, let name):
      guard state.ackedFeatures.contains(f) else { throw .notNegotiated(request: request.name, feature: name) }
    }
  }
}
