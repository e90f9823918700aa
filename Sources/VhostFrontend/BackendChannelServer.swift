import VhostProtocol
import VhostSystem
import VhostTransport

/// Serves the back-end channel (SET_BACKEND_REQ_FD) on its own thread: config-change notices,
/// in-band vring call/err, the shared-object table, and a clean "not supported" for the rest.
/// Replies go out only when the back-end sets NEED_REPLY (REPLY_ACK).
public final class BackendChannelServer: @unchecked Sendable {
  let channel: MessageChannel
  /// REPLY_ACK was negotiated (fixed before the channel exists), so NEED_REPLY is honoured. The
  /// server keeps no reference to the connection: it answers while a front-end request is
  /// outstanding, and the connection is never freed on this thread.
  let replyAck: Bool
  private let lock = Lock()
  private var _configChanges = 0
  private var _vringCalls: [UInt32: Int] = [:]
  private var _vringErrors: [UInt32: Int] = [:]
  private var _sharedObjects: Set<[UInt8]> = []
  private var _rejected: [String] = []
  /// Whether the thread was started (the Thread object itself is not kept: it retains its
  /// closure, which retains us — a cycle that leaked every worker and its descriptors).
  private var threadStarted = false
  private let done = Condition()
  private var finished = false
  /// Called (on the channel thread) for each BACKEND_CONFIG_CHANGE_MSG.
  public var onConfigChange: (@Sendable () -> Void)?

  /// A server over `socket` (the fuzzers build one without a connection).
  @_spi(Fuzzing) public convenience init(socket: UnixSocket) {
    self.init(socket: socket, replyAck: true, timeoutMilliseconds: 100)
  }

  init(socket: UnixSocket, replyAck: Bool, timeoutMilliseconds: Int) {
    channel = MessageChannel(socket: socket, timeoutMilliseconds: timeoutMilliseconds)
    self.replyAck = replyAck
  }

  func start() {
    threadStarted = true
    do {
      try SystemThread.start(name: "vhost-be-channel") { [self] in
        self.run()
        self.done.lock()
        self.finished = true
        self.done.broadcast()
        self.done.unlock()
      }
    } catch {
      threadStarted = false
    }
  }

  /// Stops serving and waits for the thread to end.
  public func stop() {
    channel.socket.shutdown()
    guard threadStarted else { return }
    done.lock()
    while !finished { _ = done.wait(until: .after(milliseconds: 1000)) }
    done.unlock()
  }

  /// How many BACKEND_CONFIG_CHANGE_MSG arrived.
  public var configChanges: Int { lock.withLock { _configChanges } }
  /// In-band BACKEND_VRING_CALL counts per ring.
  public var vringCalls: [UInt32: Int] { lock.withLock { _vringCalls } }
  /// BACKEND_VRING_ERR counts per ring.
  public var vringErrors: [UInt32: Int] { lock.withLock { _vringErrors } }
  /// UUIDs registered with BACKEND_SHARED_OBJECT_ADD.
  public var sharedObjects: Set<[UInt8]> { lock.withLock { _sharedObjects } }
  /// The latest requests refused as unsupported or malformed, by name (at most 64 are kept, so a
  /// flooding back-end cannot grow our memory).
  public var rejected: [String] { lock.withLock { _rejected } }
  /// How many requests were refused in all.
  public var rejectedCount: Int { lock.withLock { _rejectedCount } }

  private var _rejectedCount = 0

  private func reject(_ name: String) {
    lock.withLock {
      _rejectedCount += 1
      _rejected.append(name)
      if _rejected.count > 64 { _rejected.removeFirst(_rejected.count - 64) }
    }
  }

  private func run() {
    while true {
      let raw: RawMessage
      do {
        raw = try channel.receiveRaw(waitMilliseconds: -1)
      } catch {
        return  // closed, or a header we cannot resync from: the channel ends
      }
      let status: UInt64
      var needsReply = raw.header.flags.contains(.needReply)
      let code = BackendRequest(rawValue: raw.header.request)
      do {
        let received = try MessageChannel.decodeRequest(raw, as: BackendRequest.self)
        status = handle(received.message)
        needsReply = received.message.needsReply
      } catch {
        reject(code.name)
        status = 1
      }
      if needsReply && replyAck {
        do {
          try channel.reply(to: code, payload: .u64(status))
        } catch {
          return
        }
      }
    }
  }

  /// Returns the REPLY_ACK status for one request.
  @_spi(Fuzzing) public func handle(_ message: BackendMessage) -> UInt64 {
    switch (message.code, message.payload) {
    case (.configChange, _):
      lock.withLock { _configChanges += 1 }
      onConfigChange?()
      return 0
    case (.vringCall, .vringState(let s)):
      lock.withLock { _vringCalls[s.index, default: 0] += 1 }
      return 0
    case (.vringErr, .vringState(let s)):
      lock.withLock { _vringErrors[s.index, default: 0] += 1 }
      return 0
    case (.sharedObjectAdd, .sharedObject(let o)):
      // A bounded table: a back-end cannot make us hold an unlimited number of objects.
      return lock.withLock {
        guard _sharedObjects.count < 4096 || _sharedObjects.contains(o.uuid) else { return 1 }
        _sharedObjects.insert(o.uuid)
        return 0
      }
    case (.sharedObjectRemove, .sharedObject(let o)):
      return lock.withLock { _sharedObjects.remove(o.uuid) == nil ? 1 : 0 }
    default:
      // IOTLB misses (no vIOMMU here), host notifiers, SHMEM and lookups we cannot serve.
      reject(message.code.name)
      return 1
    }
  }
}
