import Foundation
import Testing
import VhostProtocol
import VhostSystem
import VhostTooling
import VhostTools
import VhostTransport

#if canImport(Glibc)
  import Glibc
#endif

/// Collects a tracer's events (tests read them while the tracer runs).
final class TraceCollector: @unchecked Sendable {
  private let lock = NSLock()
  private var _events: [TraceEvent] = []
  private let writer: TraceWriter?

  /// Also writes every event through `writer` (a file the test reads back), if given.
  init(writer: TraceWriter? = nil) { self.writer = writer }

  var sink: @Sendable (TraceEvent) -> Void {
    { [self] event in
      lock.withLock { _events.append(event) }
      writer?.write(event)
    }
  }

  var events: [TraceEvent] { lock.withLock { _events } }
  var messages: [TraceMessage] { events.compactMap(\.message) }
  var text: String { events.map(\.text).joined(separator: "\n") }

  /// Messages called `request` that went in `direction`.
  func messages(_ request: String, _ direction: TraceDirection? = nil) -> [TraceMessage] {
    messages.filter { $0.request == request && (direction == nil || $0.direction == direction) }
  }

  /// Waits (polling the collected events) until `condition` holds or `seconds` pass.
  func wait(seconds: Double, _ condition: (TraceCollector) -> Bool) -> Bool {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
      if condition(self) { return true }
      usleep(20_000)
    }
    return condition(self)
  }
}

/// The tracer between scripted peers in this process: bytes and descriptors pass unchanged, the
/// back-end channel is tapped, malformed messages are relayed, and reconnection works.
@Suite
struct TraceRelayTests {
  /// fstat's (device, inode): the identity of an open file.
  static func identity(_ fd: OwnedFD) -> (UInt64, UInt64) {
    var st = stat()
    _ = fstat(fd.rawValue, &st)
    return (UInt64(st.st_dev), UInt64(st.st_ino))
  }

  /// Reads `count` raw bytes (no validation) and the descriptors that came with them.
  static func receive(_ socket: UnixSocket, _ count: Int) throws -> ([UInt8], [OwnedFD]) {
    try socket.receive(count: count, deadline: .after(milliseconds: 5000), what: "test bytes")
  }

  @Test("bytes and fds pass unchanged; the back-end channel is tapped both ways; reconnect works")
  func relay() throws {
    let dir = try TemporaryDirectory()
    let backPath = dir.file("back.sock")
    let tracePath = dir.file("trace.sock")
    let backListener = try UnixListener(path: backPath)
    let collector = TraceCollector()
    let tracer = try Tracer(listenPath: tracePath, connectPath: backPath, sink: collector.sink)
    tracer.startInBackground()
    defer { tracer.stopAndWait() }

    // Connection 1.
    let front = try UnixSocket.connect(to: tracePath)
    let back = try #require(try backListener.accept(timeoutMilliseconds: 5000), "the tracer did not connect")
    let frontChannel = MessageChannel(socket: front)
    let backChannel = MessageChannel(socket: back)

    // A request and its reply, byte for byte.
    let getFeatures = FrontendMessage(.getFeatures).encoded()
    try frontChannel.sendRaw(getFeatures)
    #expect(try Self.receive(back, getFeatures.count).0 == getFeatures)
    let offer = FrontendMessage(.getFeatures, flags: .reply, payload: .u64(0x1_4000_0000)).encoded()
    try backChannel.sendRaw(offer)
    #expect(try Self.receive(front, offer.count).0 == offer)

    // A memory table: the back-end gets the very file the front-end sent.
    let memory = try SharedMemory(anonymous: "trace-test", size: 1 << 16)
    let table = FrontendMessage(
      .setMemTable, flags: .needReply,
      payload: .memoryTable(
        MemoryTable(regions: [
          MemoryRegion(guestPhysAddr: 0, memorySize: 1 << 16, userAddr: memory.address, mmapOffset: 0)
        ]))
    ).encoded()
    try frontChannel.sendRaw(table, fds: [memory.fd])
    let (tableBytes, tableFDs) = try Self.receive(back, table.count)
    #expect(tableBytes == table)
    #expect(tableFDs.count == 1)
    if let fd = tableFDs.first { #expect(Self.identity(fd) == Self.identity(memory.fd)) }
    let ack = FrontendMessage(.setMemTable, flags: .reply, payload: .u64(0)).encoded()
    try backChannel.sendRaw(ack)
    #expect(try Self.receive(front, ack.count).0 == ack)

    // SET_BACKEND_REQ_FD: same bytes, but the back-end gets the tracer's socket.
    let (frontEnd, frontEndPeer) = try UnixSocket.pair()
    let setBackendFD = FrontendMessage(.setBackendReqFD).encoded()
    try frontChannel.sendRaw(setBackendFD, fds: [frontEndPeer.fd])
    let (setBytes, setFDs) = try Self.receive(back, setBackendFD.count)
    #expect(setBytes == setBackendFD)
    let backendChannelFD = try #require(setFDs.first)
    #expect(Self.identity(backendChannelFD) != Self.identity(frontEndPeer.fd))
    let backEnd = UnixSocket(backendChannelFD)
    // A back-end request on the tapped channel and the front-end's reply.
    let vringCall = BackendMessage(.vringCall, flags: .needReply, payload: .vringState(VringState(index: 1, num: 0)))
      .encoded()
    try MessageChannel(socket: backEnd).sendRaw(vringCall)
    #expect(try Self.receive(frontEnd, vringCall.count).0 == vringCall)
    let vringCallAck = BackendMessage(.vringCall, flags: .reply, payload: .u64(0)).encoded()
    try MessageChannel(socket: frontEnd).sendRaw(vringCallAck)
    #expect(try Self.receive(backEnd, vringCallAck.count).0 == vringCallAck)

    // Malformed messages go through as they are: reserved flags, a wrong body size, a bad version.
    var forged = MessageHeader(request: 8, flags: HeaderFlags(rawValue: 0x101), size: 4).encoded() + [1, 2, 3, 4]
    forged += [99, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
    try front.send(forged, timeoutMilliseconds: 5000)
    #expect(try Self.receive(back, forged.count).0 == forged)

    // The front-end closes: the back-end and its back-end channel see the end.
    front.shutdown()
    #expect(throws: TransportError.self) { try Self.receive(back, 1) }
    #expect(throws: TransportError.self) { try Self.receive(backEnd, 1) }
    #expect(throws: TransportError.self) { try Self.receive(frontEnd, 1) }

    // Connection 2 (a reconnecting front-end); this time the back-end closes first.
    let front2 = try UnixSocket.connect(to: tracePath)
    let back2 = try #require(try backListener.accept(timeoutMilliseconds: 5000), "no second connection")
    let getProtocol = FrontendMessage(.getProtocolFeatures).encoded()
    try front2.send(getProtocol, timeoutMilliseconds: 5000)
    #expect(try Self.receive(back2, getProtocol.count).0 == getProtocol)
    back2.shutdown()
    #expect(throws: TransportError.self) { try Self.receive(front2, 1) }
    #expect(collector.wait(seconds: 5) { _ in tracer.activeConnections == 0 })
    #expect(tracer.connectionsAccepted == 2)

    // What the trace shows.
    let m = collector.messages
    let directions = m.map(\.direction)
    #expect(
      directions.prefix(9) == [
        .frontToBack, .backToFront, .frontToBack, .backToFront, .frontToBack, .backendChannelBackToFront,
        .backendChannelFrontToBack, .frontToBack, .frontToBack,
      ], "\(collector.text)")
    #expect(
      m.map(\.request).prefix(7).elementsEqual([
        "GET_FEATURES", "GET_FEATURES", "SET_MEM_TABLE", "SET_MEM_TABLE", "SET_BACKEND_REQ_FD",
        "BACKEND_VRING_CALL", "BACKEND_VRING_CALL",
      ]))
    #expect(collector.messages("SET_MEM_TABLE", .frontToBack).first?.fds == 1)
    #expect(collector.messages("SET_BACKEND_REQ_FD").first?.note == "back-end channel tapped")
    #expect(collector.messages("SET_VRING_NUM").first?.flags == ["RESERVED_0x100"])
    #expect(collector.messages("UNKNOWN(99)").first?.flags == ["VERSION_2"])
    #expect(m.last?.request == "GET_PROTOCOL_FEATURES" && m.last?.connection == 2)
    let notices = collector.events.compactMap { e -> TraceNotice? in
      if case .notice(let n) = e { return n }
      return nil
    }
    #expect(notices.filter { $0.event == "connected" }.map(\.connection) == [1, 2])
    #expect(notices.contains { $0.event == "closed" && $0.connection == 1 && $0.detail.contains("front-end closed") })
    #expect(notices.contains { $0.event == "closed" && $0.connection == 2 && $0.detail.contains("back-end closed") })
  }

  @Test("a front-end arriving while the back-end is down is closed; the tracer keeps listening")
  func backendDown() throws {
    let dir = try TemporaryDirectory()
    let backPath = dir.file("back.sock")
    let collector = TraceCollector()
    let tracer = try Tracer(listenPath: dir.file("trace.sock"), connectPath: backPath, sink: collector.sink)
    tracer.startInBackground()
    defer { tracer.stopAndWait() }
    let front = try UnixSocket.connect(to: dir.file("trace.sock"))
    #expect(throws: TransportError.self) { try Self.receive(front, 1) }
    let backListener = try UnixListener(path: backPath)
    let front2 = try UnixSocket.connect(to: dir.file("trace.sock"))
    let back2 = try #require(try backListener.accept(timeoutMilliseconds: 5000))
    let bytes = FrontendMessage(.setOwner).encoded()
    try front2.send(bytes, timeoutMilliseconds: 5000)
    #expect(try Self.receive(back2, bytes.count).0 == bytes)
    guard case .notice(let first)? = collector.events.first else {
      Issue.record("no notice first: \(collector.text)")
      return
    }
    #expect(first.event == "error" && first.detail.contains("not reachable"), "\(first)")
  }
}
