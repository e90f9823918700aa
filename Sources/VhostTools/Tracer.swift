import Synchronization
import VhostProtocol
import VhostSystem
import VhostTransport

#if canImport(Glibc)
  import Glibc
#endif

/// A man-in-the-middle between vhost-user front-ends and a back-end. For each front-end that
/// connects to the listening socket it connects to the back-end and relays both directions message
/// by message, passing every byte and descriptor on unchanged, and reports each message to `sink`
/// before forwarding it. SET_BACKEND_REQ_FD is the one message whose descriptor is replaced: the
/// back-end gets one end of the tracer's own socket pair, and the back-end channel is relayed
/// between the other end and the front-end's socket, so it is traced too. When either side of a
/// connection closes, the tracer closes the other and waits for the next front-end.
public final class Tracer: @unchecked Sendable {
  public let listener: UnixListener
  /// The back-end's socket.
  public let connectPath: String
  /// The device type for feature names; nil: inferred per connection from GET_FEATURES.
  public let device: VirtioDeviceType?
  /// Frame bodies larger than this are not vhost-user (the largest payload is 2056 bytes): the header
  /// is forwarded, then the connection is closed.
  public static let maxBodySize = 1 << 20

  private let sink: @Sendable (TraceEvent) -> Void
  private let origin = Tracer.now()
  private let stopping = Atomic<Bool>(false)
  /// Guards the session table and counters.
  private let lock = Lock()
  private var sessions: [Int: TraceSession] = [:]
  private var accepted = 0
  /// Serialises reporting: decoding state, timestamps and sink calls (lines never interleave, and
  /// their times never go backwards).
  private let reportLock = Lock()
  /// Threads still running (the accept loop when started in the background, and every relay).
  private let threads = Condition()
  private var liveThreads = 0

  /// A tracer taking front-ends on `listener` and connecting each to the back-end at `connectPath`.
  public init(
    listener: UnixListener, connectPath: String, device: VirtioDeviceType? = nil,
    sink: @escaping @Sendable (TraceEvent) -> Void
  ) {
    ignoreSIGPIPE()
    self.listener = listener
    self.connectPath = connectPath
    self.device = device
    self.sink = sink
  }

  /// Listens at `listenPath` (replacing a stale socket file).
  public convenience init(
    listenPath: String, connectPath: String, device: VirtioDeviceType? = nil,
    sink: @escaping @Sendable (TraceEvent) -> Void
  ) throws(SystemError) {
    self.init(listener: try UnixListener(path: listenPath), connectPath: connectPath, device: device, sink: sink)
  }

  /// Front-end connections accepted so far.
  public var connectionsAccepted: Int { lock.withLock { accepted } }
  /// Connections whose relays are still running.
  public var activeConnections: Int { lock.withLock { sessions.count } }

  /// Accepts front-ends until `stop()`.
  public func run() {
    while !stopping.load(ordering: .acquiring) {
      let socket: UnixSocket?
      do {
        socket = try listener.accept(timeoutMilliseconds: 200)
      } catch {
        notice(0, "error", "accept failed: \(error)")
        return
      }
      guard let front = socket else { continue }
      let id = lock.withLock {
        accepted += 1
        return accepted
      }
      let back: UnixSocket
      do {
        back = try UnixSocket.connect(to: connectPath)
      } catch {
        notice(id, "error", "front-end connected, but the back-end at \(connectPath) is not reachable: \(error)")
        front.shutdown()
        continue
      }
      let session = TraceSession(id: id, front: front, back: back, formatter: MessageFormatter(device: device))
      lock.withLock { sessions[id] = session }
      notice(id, "connected", "front-end connected; relaying to \(connectPath)")
      if stopping.load(ordering: .acquiring) { session.close() }
      spawn("vhost-trace-\(id)-f2b") { [self] in
        relay(session, from: front, to: back, direction: .frontToBack, tap: nil)
        sessionRelayEnded(session)
      }
      spawn("vhost-trace-\(id)-b2f") { [self] in
        relay(session, from: back, to: front, direction: .backToFront, tap: nil)
        sessionRelayEnded(session)
      }
    }
  }

  /// Runs the accept loop on a thread of its own.
  public func startInBackground() {
    spawn("vhost-trace-accept") { [self] in run() }
  }

  /// Stops accepting and closes every connection (from any thread, e.g. a signal thread).
  public func stop() {
    stopping.store(true, ordering: .releasing)
    for s in lock.withLock({ Array(sessions.values) }) { s.close() }
  }

  /// `stop()`, then waits until the accept loop (if started in the background) and every relay
  /// thread have ended.
  public func stopAndWait() {
    stop()
    threads.withLock {
      while liveThreads > 0 { _ = threads.wait(until: .after(milliseconds: 1000)) }
    }
  }

  // MARK: - Relaying

  /// One message as read off a socket: header and body bytes, and the descriptors.
  struct Frame {
    var bytes: [UInt8]
    var fds: [OwnedFD]
    var request: UInt32
    var flags: UInt32
    var size: UInt32
    /// The body was too large to read (only the header is in `bytes`).
    var oversize: Bool
  }

  /// Reads one message without validating anything beyond its framing (the tracer must pass on
  /// what the receiver would judge, malformed or not); waits as long as it takes.
  static func readFrame(_ socket: UnixSocket) throws(TransportError) -> Frame {
    let (header, headerFDs) = try socket.receive(count: MessageHeader.size, deadline: .never, what: "message header")
    var r = ByteReader(header)
    let request: UInt32 = (try? r.read()) ?? 0
    let flags: UInt32 = (try? r.read()) ?? 0
    let size: UInt32 = (try? r.read()) ?? 0
    guard Int(size) <= maxBodySize else {
      return Frame(bytes: header, fds: headerFDs, request: request, flags: flags, size: size, oversize: true)
    }
    var bytes = header
    var fds = headerFDs
    if size > 0 {
      let (body, more) = try socket.receive(count: Int(size), deadline: .never, what: "message body")
      bytes += body
      fds += more
    }
    return Frame(bytes: bytes, fds: fds, request: request, flags: flags, size: size, oversize: false)
  }

  private func relay(
    _ session: TraceSession, from: UnixSocket, to: UnixSocket, direction: TraceDirection, tap: BackendChannelTap?
  ) {
    var reason: String
    while true {
      let frame: Frame
      do {
        frame = try Self.readFrame(from)
      } catch .disconnected {
        reason = "\(Self.sender(direction)) closed the \(tap == nil ? "connection" : "back-end channel")"
        break
      } catch {
        reason = "\(direction.rawValue): \(error)"
        break
      }
      var forwarded = frame.fds
      var note: String?
      if direction == .frontToBack && frame.request == FrontendRequest.setBackendReqFD.rawValue
        && frame.flags & HeaderFlags.reply.rawValue == 0 && frame.fds.count == 1
      {
        do {
          let (ours, theirs) = try UnixSocket.pair()
          startTap(BackendChannelTap(frontEnd: UnixSocket(frame.fds[0]), ours: ours), in: session)
          forwarded = [theirs.fd]
          note = "back-end channel tapped"
        } catch {
          note = "back-end channel not tapped: \(error)"
        }
      }
      report(session, frame, direction: direction, note: frame.oversize ? "body too large to relay" : note)
      do {
        try to.send(frame.bytes, fds: forwarded.map(\.rawValue), timeoutMilliseconds: -1)
      } catch {
        reason = "\(direction.rawValue): forwarding failed: \(error)"
        break
      }
      withExtendedLifetime(forwarded) {}
      if frame.oversize {
        reason = "\(direction.rawValue): a \(frame.size)-byte body is not vhost-user; connection closed"
        break
      }
    }
    if let tap {
      if tap.close() { notice(session.id, "backend-channel-closed", reason) }
    } else if session.close() {
      notice(session.id, "closed", reason)
    }
  }

  private static func sender(_ direction: TraceDirection) -> String {
    switch direction {
    case .frontToBack, .backendChannelFrontToBack: "front-end"
    case .backToFront, .backendChannelBackToFront: "back-end"
    }
  }

  private func startTap(_ tap: BackendChannelTap, in session: TraceSession) {
    guard session.add(tap) else {
      tap.close()
      return
    }
    spawn("vhost-trace-\(session.id)-bc-b2f") { [self] in
      relay(session, from: tap.ours, to: tap.frontEnd, direction: .backendChannelBackToFront, tap: tap)
    }
    spawn("vhost-trace-\(session.id)-bc-f2b") { [self] in
      relay(session, from: tap.frontEnd, to: tap.ours, direction: .backendChannelFrontToBack, tap: tap)
    }
  }

  private func sessionRelayEnded(_ session: TraceSession) {
    guard session.relayEnded() else { return }
    lock.withLock { _ = sessions.removeValue(forKey: session.id) }
  }

  // MARK: - Reporting

  private func report(_ session: TraceSession, _ frame: Frame, direction: TraceDirection, note: String?) {
    reportLock.withLock {
      var message = session.formatter.format(
        frame.bytes, fds: frame.fds.count, direction: direction, nanoseconds: Self.now() - origin,
        connection: session.id)
      if let note { message.note = message.note.map { $0 + "; " + note } ?? note }
      sink(.message(message))
    }
  }

  private func notice(_ connection: Int, _ event: String, _ detail: String) {
    reportLock.withLock {
      sink(
        .notice(
          TraceNotice(nanoseconds: Self.now() - origin, connection: connection, event: event, detail: detail)))
    }
  }

  static func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
  }

  /// Starts a thread that is counted until it ends (the Thread object is not kept).
  private func spawn(_ name: String, _ body: @escaping @Sendable () -> Void) {
    threads.withLock { liveThreads += 1 }
    do {
      try SystemThread.start(name: name) { [self] in
        body()
        threads.withLock {
          liveThreads -= 1
          threads.broadcast()
        }
      }
    } catch {
      threads.withLock {
        liveThreads -= 1
        threads.broadcast()
      }
    }
  }
}

/// One front-end connection and the back-end connection made for it.
final class TraceSession: @unchecked Sendable {
  let id: Int
  let front: UnixSocket
  let back: UnixSocket
  /// Used under the tracer's report lock only.
  var formatter: MessageFormatter
  private let lock = Lock()
  private var closed = false
  private var taps: [BackendChannelTap] = []
  private var relaysRunning = 2

  init(id: Int, front: UnixSocket, back: UnixSocket, formatter: MessageFormatter) {
    self.id = id
    self.front = front
    self.back = back
    self.formatter = formatter
  }

  /// Closes both sides and every tapped back-end channel; true for the first caller.
  @discardableResult
  func close() -> Bool {
    let (first, tapped) = lock.withLock {
      defer { closed = true }
      return (!closed, taps)
    }
    front.shutdown()
    back.shutdown()
    for t in tapped { t.close() }
    return first
  }

  /// Registers a tap; false when the connection is already closed.
  func add(_ tap: BackendChannelTap) -> Bool {
    lock.withLock {
      guard !closed else { return false }
      taps.append(tap)
      return true
    }
  }

  /// One main relay ended; true when it was the last one.
  func relayEnded() -> Bool {
    lock.withLock {
      relaysRunning -= 1
      return relaysRunning == 0
    }
  }
}

/// A tapped back-end channel: the front-end's socket (passed in SET_BACKEND_REQ_FD) and the
/// tracer's end of the pair whose other end went to the back-end.
final class BackendChannelTap: @unchecked Sendable {
  let frontEnd: UnixSocket
  let ours: UnixSocket
  private let lock = Lock()
  private var closed = false

  init(frontEnd: UnixSocket, ours: UnixSocket) {
    self.frontEnd = frontEnd
    self.ours = ours
  }

  /// Shuts both sockets down (each peer sees the channel close); true for the first caller.
  @discardableResult
  func close() -> Bool {
    let first = lock.withLock {
      defer { closed = true }
      return !closed
    }
    frontEnd.shutdown()
    ours.shutdown()
    return first
  }
}
