import Logging
import VhostProtocol
import VhostSystem
import VhostTransport
import Virtqueue

/// Why the back-end refused a request. The connection survives unless noted.
struct RequestFailure: Error, CustomStringConvertible {
  let description: String
  /// Close the connection (the front-end cannot be answered meaningfully).
  var fatal = false
  init(_ d: String, fatal: Bool = false) {
    description = d
    self.fatal = fatal
  }
}

/// What `postConfigChange` has asked the sender thread to send.
struct PostedBackendRequests {
  var configChangePending = false
  var senderRunning = false
}

/// Settings of the back-end framework.
public struct BackendConfiguration: Sendable {
  /// Busy-poll the rings instead of waiting for kicks.
  public var poll = false
  /// Queues served by one worker thread.
  public var queuesPerThread = 1
  /// Offer RING_PACKED.
  public var offerPacked = true
  /// Memory slots announced by GET_MAX_MEM_SLOTS.
  public var maxMemSlots = Limits.defaultMaxMemSlots
  /// How long a front-end may take to finish a message it started.
  public var timeoutMilliseconds = 5000
  public var logger: Logger = {
    var l = Logger(label: "vhost-user.backend")
    l.logLevel = .warning
    return l
  }()
  public init() {}

  /// The protocol features the framework implements.
  public static let frameworkProtocolFeatures: ProtocolFeatures = [
    .mq, .logShmfd, .replyAck, .backendReq, .backendSendFD, .config, .inflightShmfd, .resetDevice,
    .configureMemSlots, .status, .deviceState, .inbandNotifications,
  ]
}

/// One front-end connection: the control thread's state machine over every front-end request.
/// All fields are owned by the control thread except the queues (see `QueueHandle`).
public final class BackendSession: @unchecked Sendable {
  public let device: VhostUserDevice
  let channel: MessageChannel
  let configuration: BackendConfiguration
  var log: Logger { configuration.logger }
  public let queues: [QueueHandle]
  var workers: [QueueWorker] = []

  var owner = false
  var ackedFeatures: VirtioFeatures = []
  var featuresSet = false
  var ackedProtocol: ProtocolFeatures = []
  var memory = GuestMemory()
  /// Regions added again by ADD_MEM_REG while mapped (see `addMemReg`), and how often.
  var duplicateRegions: [MemoryRegion: Int] = [:]
  var dirtyLog: DirtyLog?
  var logFD: EventFD?
  var inflight: InflightRegion?
  var status: UInt8 = 0
  var backendChannel: MessageChannel?
  /// Serialises sends on the back-end channel (never held while a reply is awaited).
  let backendChannelLock = Lock()
  /// Back-end requests posted for the sender thread (`postConfigChange`).
  let backendRequests = Locked(PostedBackendRequests())
  var stateTransferResult: UInt64 = 0
  let stateTransferDone = Condition()
  var stateTransferFinished = true
  /// How many requests were refused on this connection.
  public private(set) var refusalCount = 0
  /// The most recent refusals (at most `recentRefusalLimit`), oldest first: a front-end that
  /// sends refused requests forever cannot grow the session.
  public private(set) var recentRefusals: [String] = []
  /// How many refusals `recentRefusals` keeps.
  public static let recentRefusalLimit = 16

  public init(device: VhostUserDevice, socket: UnixSocket, configuration: BackendConfiguration) {
    ignoreSIGPIPE()
    self.device = device
    self.configuration = configuration
    channel = MessageChannel(socket: socket, timeoutMilliseconds: configuration.timeoutMilliseconds)
    queues = (0..<device.queueCount).map { QueueHandle(index: $0) }
    for q in queues { q.session = self }
  }

  /// Every virtio feature offered: the device's plus the framework's.
  public var offeredFeatures: VirtioFeatures {
    var f = device.features.union([.protocolFeatures, .indirectDesc, .eventIdx, .logAll, .version1])
    if configuration.offerPacked { f.insert(.ringPacked) }
    return f
  }

  public var offeredProtocolFeatures: ProtocolFeatures {
    BackendConfiguration.frameworkProtocolFeatures.union(device.extraProtocolFeatures)
  }

  var packed: Bool { ackedFeatures.contains(.ringPacked) }

  /// Serves requests until the front-end disconnects, a fatal error, or `shutdown()`.
  public func run() {
    startWorkers()
    defer { teardown() }
    while true {
      let raw: RawMessage
      do {
        raw = try channel.receiveRaw(waitMilliseconds: -1)
      } catch {
        if case .transport(.disconnected) = error {
          log.info("front-end disconnected")
        } else {
          log.warning("closing connection: \(error)")
        }
        return
      }
      if !handle(raw) { return }
    }
  }

  /// Processes every active queue once on the calling thread (fuzzers; `run()` uses workers).
  @_spi(Fuzzing) public func serviceQueuesOnce() {
    for q in queues { q.service(device) }
  }

  /// Ends `run()` from another thread.
  public func shutdown() { channel.socket.shutdown() }

  /// Handles one message; false closes the connection. (Exposed for the fuzzers, which feed whole
  /// message sequences without a peer.)
  @_spi(Fuzzing) public func handle(_ raw: RawMessage) -> Bool {
    let code = FrontendRequest(rawValue: raw.header.request)
    let needReply = raw.header.flags.contains(.needReply)
    let received: Received<FrontendRequest>
    do {
      received = try MessageChannel.decodeRequest(raw, as: FrontendRequest.self)
    } catch {
      // The body was read, so the stream is still in step: fail just this request.
      return fail(code, needReply: needReply, RequestFailure("\(error)"))
    }
    if raw.header.flags.contains(.reply) {
      return fail(code, needReply: false, RequestFailure("front-end sent a message flagged as a reply"))
    }
    do {
      let reply = try dispatch(received)
      if let reply {
        try channel.reply(to: code, payload: reply.payload, fds: reply.fds)
      } else if needReply && ackedProtocol.contains(.replyAck) {
        try channel.reply(to: code, payload: .u64(0))
      }
      return true
    } catch let failure as RequestFailure {
      return fail(code, needReply: needReply, failure)
    } catch let error as ChannelError {
      // The reply could not be sent: the connection is gone or out of step.
      log.warning("\(code.name): \(error)")
      return false
    } catch {
      // A device (or anything below the session) refused: that request fails, with a non-zero
      // REPLY_ACK where one was asked for — the connection stays.
      return fail(code, needReply: needReply, RequestFailure("\(error)"))
    }
  }

  func fail(_ code: FrontendRequest, needReply: Bool, _ failure: RequestFailure) -> Bool {
    refusalCount &+= 1
    if recentRefusals.count >= Self.recentRefusalLimit { recentRefusals.removeFirst() }
    recentRefusals.append("\(code.name): \(failure.description)")
    log.warning("refused \(code.name): \(failure.description)")
    if failure.fatal { return false }
    if code.replyLayout != nil {
      // A request with a reply body of its own: answer with a failure value where the spec has one.
      switch code {
      case .getConfig:
        return (try? channel.reply(to: code, payload: .config(ConfigSpace(offset: 0, bytes: [])))) != nil
      case .postcopyEnd, .checkDeviceState, .iotlbMsg, .setLogBase, .setDeviceStateFD:
        // Their u64 is a status: non-zero is a failure.
        return (try? channel.reply(to: code, payload: .u64(1))) != nil
      default:
        // GET_FEATURES, GET_QUEUE_NUM, GET_VRING_BASE, GET_INFLIGHT_FD, ...: every value is a real
        // answer, so none can say "failed"; close the connection instead of inventing one.
        return false
      }
    }
    if needReply && ackedProtocol.contains(.replyAck) {
      return (try? channel.reply(to: code, payload: .u64(1))) != nil
    }
    return true
  }

  struct Reply {
    var payload: Payload
    var fds: [OwnedFD] = []
  }

  func require(_ feature: ProtocolFeatures, _ code: FrontendRequest) throws {
    guard ackedProtocol.contains(feature) else {
      throw RequestFailure("\(code.name) needs protocol feature \(feature.names.joined()), not negotiated")
    }
  }

  func requireOwner(_ code: FrontendRequest) throws {
    guard owner else { throw RequestFailure("\(code.name) before SET_OWNER") }
  }

  func queue(_ index: UInt32, _ code: FrontendRequest) throws -> QueueHandle {
    guard Int(index) < queues.count else {
      throw RequestFailure("\(code.name): vring \(index) does not exist (device has \(queues.count))")
    }
    return queues[Int(index)]
  }
}
