import Foundation
import Synchronization
import Testing
import VhostBackend
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTransport
import Virtqueue

#if canImport(Glibc)
  import Glibc
#endif

/// Every test of this target runs one after the other: several of them compare the process's open
/// descriptor count and resident size before and after, which a test running beside them would disturb.
@Suite(.serialized) struct BackendTests {}

// MARK: - The echo device

/// A device that answers every chain with its readable bytes XOR 0x5a, written into its writable part.
final class EchoDevice: VhostUserDevice {
  struct Counters {
    var chains: [Int]
    var resets = 0
    var acked: VirtioFeatures = []
    var loaded: [UInt8]?
  }

  let type = "echo"
  let queueCount: Int
  let maxQueueSize = 1024
  /// 0x10 bytes of config space (read-only: SET_CONFIG is refused).
  let configSpace: [UInt8] = (0..<16).map { UInt8(0xc0 + $0) }
  /// What `saveState` hands out and `loadState` accepts.
  let savedState: [UInt8] = Array("echo-device-state:v1".utf8) + (0..<64).map { UInt8($0 * 3 & 0xff) }
  private let counters: Locked<Counters>

  /// Takes chains with `QueueHandle.nextBurst` (the burst path) instead of `next()`.
  let bursts: Bool

  init(queues: Int = 1, bursts: Bool = false) {
    queueCount = queues
    self.bursts = bursts
    counters = Locked(Counters(chains: Array(repeating: 0, count: queues)))
  }

  var features: VirtioFeatures { .version1 }

  func readConfig() -> [UInt8] { configSpace }

  func writeConfig(offset: Int, bytes: [UInt8], migration: Bool) throws {
    throw DeviceError("the echo device's config space is read-only")
  }

  func featuresAcknowledged(_ features: VirtioFeatures) { counters.withLock { $0.acked = features } }

  func reset() { counters.withLock { $0.resets += 1 } }

  func process(_ queue: QueueHandle) {
    if bursts {
      processBursts(queue)
      return
    }
    var served = 0
    while let chain = queue.next() {
      var reader = chain.reader()
      let bytes = reader.read(reader.remaining)
      var writer = chain.writer(log: queue.log)
      writer.write(bytes.map { $0 ^ 0x5a })
      queue.complete(chain, written: writer.written)
      served += 1
    }
    counters.withLock { $0.chains[queue.index] += served }
    queue.notifyIfNeeded()
  }

  /// The same echo through the burst API (bursts of at most 3 chains, so a ring of several
  /// chains takes several bursts).
  func processBursts(_ queue: QueueHandle) {
    var served = 0
    let buffer = PacketBuffer(capacity: 1 << 16)
    queue.withBurstStorage { burst in
      while queue.nextBurst(&burst, limit: 3) > 0 {
        for i in 0..<burst.count where !burst.isFailed(i) {
          let n = burst.gather(i, count: burst.readableLength(i), into: buffer, at: 0)
          for k in 0..<n { buffer[k] ^= 0x5a }
          burst.setWritten(i, burst.scatter(i, from: buffer, 0..<n, log: queue.log))
          served += 1
        }
        queue.completeBurst(&burst)
      }
    }
    counters.withLock { $0.chains[queue.index] += served }
    queue.notifyIfNeeded()
  }

  func saveState() -> [UInt8] { savedState }

  func loadState(_ bytes: [UInt8]) throws {
    guard bytes == savedState else { throw DeviceError("not an echo device state (\(bytes.count) bytes)") }
    counters.withLock { $0.loaded = bytes }
  }

  /// Chains served on `queue` so far.
  func chains(_ queue: Int) -> Int { counters.withLock { $0.chains[queue] } }
  var resets: Int { counters.withLock { $0.resets } }
  var acked: VirtioFeatures { counters.withLock { $0.acked } }
  var loaded: [UInt8]? { counters.withLock { $0.loaded } }
}

// MARK: - A back-end in this process

private let socketCounter = Atomic<Int>(0)

extension BackendConfiguration {
  /// The default configuration with the logger silenced (the hostile tests provoke many warnings).
  static func quiet(queuesPerThread: Int = 1, timeoutMilliseconds: Int = 5000) -> BackendConfiguration {
    var c = BackendConfiguration()
    c.logger.logLevel = .critical
    c.queuesPerThread = queuesPerThread
    c.timeoutMilliseconds = timeoutMilliseconds
    return c
  }
}

extension FrontendConfiguration {
  static func quiet(extraProtocolFeatures: ProtocolFeatures = []) -> FrontendConfiguration {
    var c = FrontendConfiguration()
    c.logger.logLevel = .critical
    c.supportedProtocolFeatures.formUnion(extraProtocolFeatures)
    return c
  }
}

/// A `BackendServer` serving an `EchoDevice` on a fresh socket path, running on a thread of its own.
final class LoopbackBackend: @unchecked Sendable {
  let path: String
  let device: EchoDevice
  let server: BackendServer
  private let running = RunningFlag()

  init(device: EchoDevice = EchoDevice(), configuration: BackendConfiguration = .quiet()) throws {
    let n = socketCounter.add(1, ordering: .relaxed).newValue
    path = "/tmp/vhost-betests-\(getpid())-\(n).sock"
    self.device = device
    server = BackendServer(listener: try UnixListener(path: path), device: device, configuration: configuration)
    // Foundation's Thread keeps its block as long as the Thread object lives, which ends a little
    // after the block returns: the block holds the server weakly so its listener closes with us.
    let running = self.running
    let thread = Thread { [weak server] in
      server?.run()
      running.clear()
    }
    thread.name = "betests-backend-\(n)"
    thread.start()
  }

  /// Stops the server and waits until `run()` has returned.
  func stop() {
    server.stop()
    running.wait()
    unlink(path)
  }

  /// A front-end connection (our `VhostUserConnection`).
  func connect(configuration: FrontendConfiguration = .quiet()) throws -> VhostUserConnection {
    try VhostUserConnection.connect(path: path, configuration: configuration, retryMilliseconds: 2000)
  }

  /// A raw socket to the server, for forging messages.
  func raw(timeoutMilliseconds: Int = 3000) throws -> RawClient {
    RawClient(
      channel: MessageChannel(socket: try UnixSocket.connect(to: path), timeoutMilliseconds: timeoutMilliseconds))
  }

  /// Waits until no session is being served (the last front-end's teardown is done).
  func waitIdle(timeout: Double = 5) -> Bool { waitUntil(timeout: timeout) { server.currentSession == nil } }
}

/// A flag one thread clears and another waits for.
final class RunningFlag: @unchecked Sendable {
  private let condition = NSCondition()
  private var running = true

  func clear() {
    condition.withLock {
      running = false
      condition.broadcast()
    }
  }

  func wait() {
    condition.withLock {
      while running { _ = condition.wait(until: Date().addingTimeInterval(1)) }
    }
  }
}

// MARK: - Waiting

/// Polls `condition` until it holds or `timeout` seconds pass; returns its last value.
func waitUntil(timeout: Double = 5, _ condition: () -> Bool) -> Bool {
  let end = Date().addingTimeInterval(timeout)
  while true {
    if condition() { return true }
    if Date() >= end { return condition() }
    usleep(1000)
  }
}

/// Reaps `ring` until `count` chains have completed; waits on `call` between reaps (or polls
/// when there is no call eventfd).
func collectUsed(_ ring: SplitDriverQueue, call: EventFD?, count: Int, timeout: Double = 10) throws -> [UsedElement] {
  var out: [UsedElement] = []
  let end = Date().addingTimeInterval(timeout)
  while out.count < count {
    let used = try ring.reapUsed()
    out += used
    if out.count >= count { break }
    if Date() >= end { throw TestFailure("only \(out.count) of \(count) chains completed in \(timeout) s") }
    if !used.isEmpty { continue }
    if let call {
      if call.wait(timeoutMilliseconds: 20) { call.drain() }
    } else {
      usleep(500)
    }
  }
  return out
}

/// `QueueDriver.waitUsed` until `count` chains have completed.
func collectUsed(_ queue: QueueDriver, count: Int, timeoutMilliseconds: Int = 10_000) throws -> [UsedElement] {
  var out: [UsedElement] = []
  while out.count < count { out += try queue.waitUsed(timeoutMilliseconds: timeoutMilliseconds) }
  return out
}

struct TestFailure: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}

// MARK: - Process measurements

/// Resident pages of this process (/proc/self/statm, second field) in bytes.
func residentBytes() -> Int {
  guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return -1 }
  let fields = text.split(separator: " ")
  guard fields.count > 1, let pages = Int(fields[1]) else { return -1 }
  return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// Whether this process runs under AddressSanitizer (`swift test --sanitize=address`).
let underAddressSanitizer: Bool = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__asan_init") != nil

/// Open descriptors with what they point to (for a readable message when a count differs).
func openDescriptors() -> [String] {
  guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return [] }
  return entries.sorted { (Int($0) ?? 0) < (Int($1) ?? 0) }.map { e in
    let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(e)")) ?? "?"
    return "\(e) -> \(target)"
  }
}

/// The open descriptor count once it has stopped changing: objects of earlier connections that
/// their (finished) threads still reference are released a moment after those threads end.
func settledDescriptorCount() -> Int {
  var last = OwnedFD.openCount()
  var stableSince = Date()
  let end = Date().addingTimeInterval(5)
  while Date() < end {
    usleep(2000)
    let now = OwnedFD.openCount()
    if now != last {
      last = now
      stableSince = Date()
    } else if Date().timeIntervalSince(stableSince) >= 0.1 {
      break
    }
  }
  return last
}

/// Waits until the open descriptor count is back at `baseline`, then returns the count (and
/// records the listing if it is not).
@discardableResult
func expectDescriptorCount(
  _ baseline: Int, before: [String], timeout: Double = 5, sourceLocation: SourceLocation = #_sourceLocation
) -> Int {
  _ = waitUntil(timeout: timeout) { OwnedFD.openCount() == baseline }
  let now = OwnedFD.openCount()
  if now != baseline {
    let after = openDescriptors()
    let added = after.filter { !before.contains($0) }
    let removed = before.filter { !after.contains($0) }
    Issue.record(
      "open descriptors: \(baseline) before, \(now) after; new: \(added); gone: \(removed)",
      sourceLocation: sourceLocation)
  }
  return now
}

/// A pipe: (read end, write end).
func makePipe() throws -> (OwnedFD, OwnedFD) {
  var fds: [Int32] = [-1, -1]
  guard pipe(&fds) == 0 else { throw SystemError.current("pipe") }
  return (OwnedFD(taking: fds[0]), OwnedFD(taking: fds[1]))
}

/// Reads exactly `count` bytes (or up to EOF) from `fd`, waiting at most `timeout` seconds.
func readBytes(_ fd: OwnedFD, count: Int, timeout: Double = 5) -> [UInt8] {
  var out: [UInt8] = []
  var buf = [UInt8](repeating: 0, count: 4096)
  let end = Date().addingTimeInterval(timeout)
  while out.count < count && Date() < end {
    var p = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
    guard poll(&p, 1, 100) > 0 else { continue }
    let n = buf.withUnsafeMutableBytes { read(fd.rawValue, $0.baseAddress!, min($0.count, count - out.count)) }
    if n <= 0 { break }
    out += buf[0..<n]
  }
  return out
}

func writeBytes(_ fd: OwnedFD, _ bytes: [UInt8]) throws {
  var sent = 0
  while sent < bytes.count {
    let n = bytes.withUnsafeBytes { write(fd.rawValue, $0.baseAddress! + sent, $0.count - sent) }
    if n < 0 {
      if errno == EINTR { continue }
      throw SystemError.current("write")
    }
    sent += n
  }
}

// MARK: - Bytes

/// Deterministic pseudo-random bytes (SplitMix64).
struct SplitMix64 {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
  mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8(truncatingIfNeeded: next()) } }
}

/// The bytes of chain `n` of a stream identified by `seed`.
func pattern(seed: UInt64, _ n: Int, count: Int) -> [UInt8] {
  var rng = SplitMix64(seed: seed &* 1_000_003 &+ UInt64(n))
  return rng.bytes(count)
}

func xor5a(_ bytes: [UInt8]) -> [UInt8] { bytes.map { $0 ^ 0x5a } }

// MARK: - Driving a split ring by hand

/// Direct access to a split ring in memory the test owns: descriptors, avail and used ring written
/// and read field by field, for chains `SplitDriverQueue` cannot express (indirect tables, loops,
/// bad addresses, avail index jumps). A ring driven this way must not also be used through its
/// `SplitDriverQueue`.
struct RawSplitRing {
  let mem: SharedMemory
  let size: UInt16
  let descOffset: UInt64
  let availOffset: UInt64
  let usedOffset: UInt64

  init(_ queue: SplitDriverQueue, in memory: DriverMemory) {
    mem = memory.memory
    size = queue.size
    descOffset = queue.descOffset
    availOffset = queue.availOffset
    usedOffset = queue.usedOffset
  }

  /// Writes descriptor `index` of the ring's table.
  func setDescriptor(_ index: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0) throws {
    try writeDescriptor(
      mem, at: descOffset + UInt64(index) * 16, address: address, length: length, flags: flags, next: next)
  }

  var availIndex: UInt16 { get throws { try mem.loadAcquire16(at: availOffset + 2) } }

  /// Publishes `head` at the next avail slot and moves the avail index (release).
  func publish(_ head: UInt16) throws {
    let idx = try availIndex
    try mem.store(head, at: availOffset + 4 + UInt64(idx % size) * 2)
    try mem.storeRelease16(idx &+ 1, at: availOffset + 2)
  }

  func setAvailIndex(_ value: UInt16) throws { try mem.storeRelease16(value, at: availOffset + 2) }

  var usedIndex: UInt16 { get throws { try mem.loadAcquire16(at: usedOffset + 2) } }

  func usedElement(_ i: UInt16) throws -> RawUsed {
    let at = usedOffset + 4 + UInt64(i % size) * 8
    return RawUsed(id: try mem.load(UInt32.self, at: at), length: try mem.load(UInt32.self, at: at + 4))
  }

  /// Waits until the used index reaches `index`, then returns the elements from `from` on.
  func waitUsed(from: UInt16, to index: UInt16, call: EventFD?, timeout: Double = 5) throws -> [RawUsed] {
    let end = Date().addingTimeInterval(timeout)
    while try (usedIndex &- from) < (index &- from) {
      if Date() >= end { throw TestFailure("used index \(try usedIndex), waited for \(index)") }
      if let call, call.wait(timeoutMilliseconds: 20) { call.drain() } else if call == nil { usleep(500) }
    }
    var out: [RawUsed] = []
    var i = from
    while i != index {
      out.append(try usedElement(i))
      i &+= 1
    }
    return out
  }
}

/// A used-ring element as the device wrote it.
struct RawUsed: Equatable, CustomStringConvertible {
  var id: UInt32
  var length: UInt32
  var description: String { "{id \(id), len \(length)}" }
}

/// Writes one 16-byte split descriptor {addr, len, flags, next}.
func writeDescriptor(
  _ mem: SharedMemory, at offset: UInt64, address: UInt64, length: UInt32, flags: UInt16, next: UInt16
)
  throws
{
  try mem.store(address, at: offset)
  try mem.store(length, at: offset + 8)
  try mem.store(flags, at: offset + 12)
  try mem.store(next, at: offset + 14)
}

// MARK: - A forging front-end

/// A raw vhost-user client: sends whatever bytes and descriptors it is told to and reports what
/// comes back.
final class RawClient {
  let channel: MessageChannel

  init(channel: MessageChannel) { self.channel = channel }

  enum Outcome: CustomStringConvertible {
    case reply(RawMessage)
    case closed(String)
    case timeout

    var description: String {
      switch self {
      case .reply(let m):
        "reply code \(m.header.request) flags 0x\(String(m.header.flags.rawValue, radix: 16)) body \(m.body)"
      case .closed(let why): "closed (\(why))"
      case .timeout: "no answer"
      }
    }

    var isClosed: Bool {
      if case .closed = self { return true }
      return false
    }

    /// The u64 of a reply, if it is one.
    var u64: UInt64? {
      guard case .reply(let m) = self, m.body.count == 8 else { return nil }
      return m.body.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }
  }

  static let needReply: UInt32 = 0x1 | 0x8

  /// Sends a header (with `size`, default the body's length) and body.
  func send(_ code: UInt32, flags: UInt32 = needReply, body: [UInt8] = [], size: UInt32? = nil, fds: [OwnedFD] = [])
    throws
  {
    var w = ByteWriter()
    w.write(code)
    w.write(flags)
    w.write(size ?? UInt32(body.count))
    try channel.sendRaw(w.bytes + body, fds: fds)
  }

  func send(_ code: FrontendRequest, flags: UInt32 = needReply, _ payload: Payload = .empty, fds: [OwnedFD] = [])
    throws
  {
    try send(code.rawValue, flags: flags, body: payload.encoded(), fds: fds)
  }

  /// The next message, or why there is none.
  func receive() -> Outcome {
    do {
      return .reply(try channel.receiveRaw())
    } catch {
      if case .transport(.timeout) = error { return .timeout }
      return .closed("\(error)")
    }
  }

  /// Sends `code` and returns what answers it.
  func exchange(_ code: FrontendRequest, flags: UInt32 = needReply, _ payload: Payload = .empty, fds: [OwnedFD] = [])
    throws -> Outcome
  {
    try send(code, flags: flags, payload, fds: fds)
    return receive()
  }

  /// GET_FEATURES, GET/SET_PROTOCOL_FEATURES (everything offered except in-band notifications,
  /// so REPLY_ACK is on), and optionally SET_OWNER. Returns the virtio features offered.
  @discardableResult
  func negotiate(owner: Bool = true) throws -> UInt64 {
    guard let features = try exchange(.getFeatures, flags: 1).u64 else { throw TestFailure("GET_FEATURES") }
    guard let offer = try exchange(.getProtocolFeatures, flags: 1).u64 else {
      throw TestFailure("GET_PROTOCOL_FEATURES")
    }
    let use = ProtocolFeatures(rawValue: offer).subtracting(.inbandNotifications)
    guard try exchange(.setProtocolFeatures, .u64(use.rawValue)).u64 == 0 else {
      throw TestFailure("SET_PROTOCOL_FEATURES")
    }
    if owner {
      guard try exchange(.setOwner).u64 == 0 else { throw TestFailure("SET_OWNER") }
    }
    return features
  }
}

// MARK: - Counting what a front-end sends

/// A transparent relay between one front-end and the back-end at `target`: forwards every message
/// (with its descriptors) both ways and counts the front-end's requests by code. `stop()` closes
/// everything it opened before it returns.
final class MessageRelay: @unchecked Sendable {
  let path: String
  private let counts = Locked<[UInt32: Int]>([:])
  private let state = NSCondition()
  private var listener: UnixListener?
  private var channels: [MessageChannel] = []
  private var threads = 1

  init(to target: String) throws {
    let n = socketCounter.add(1, ordering: .relaxed).newValue
    path = "/tmp/vhost-betests-relay-\(getpid())-\(n).sock"
    listener = try UnixListener(path: path)
    let thread = Thread { [self] in
      serve(target)
      finished()
    }
    thread.name = "betests-relay-\(n)"
    thread.start()
  }

  /// How many requests with `code` the front-end sent so far.
  func count(_ code: FrontendRequest) -> Int { counts.withLock { $0[code.rawValue, default: 0] } }

  /// Ends the relay (after the front-end closed its connection) and waits for its threads.
  func stop() {
    state.withLock {
      for c in channels { c.socket.shutdown() }
      while threads > 0 { _ = state.wait(until: Date().addingTimeInterval(1)) }
      channels = []
      listener = nil
    }
    unlink(path)
  }

  private func finished() {
    state.withLock {
      threads -= 1
      state.broadcast()
    }
  }

  private func serve(_ target: String) {
    guard let l = state.withLock({ listener }), let front = try? l.accept(timeoutMilliseconds: 10_000) else { return }
    guard let back = try? UnixSocket.connect(to: target) else {
      front.shutdown()
      return
    }
    state.withLock {
      channels = [MessageChannel(socket: front), MessageChannel(socket: back)]
      threads += 1
    }
    let up = Thread { [self] in
      pump(from: 0, to: 1)
      finished()
    }
    up.start()
    pump(from: 1, to: 0)
  }

  private func pump(from i: Int, to j: Int) {
    let (from, to) = state.withLock { (channels[i], channels[j]) }
    while true {
      guard let m = try? from.receiveRaw(waitMilliseconds: -1) else { break }
      if i == 0 { counts.withLock { $0[m.header.request, default: 0] += 1 } }
      guard (try? to.sendRaw(m.header.encoded() + m.body, fds: m.fds)) != nil else { break }
    }
    from.socket.shutdown()
    to.socket.shutdown()
  }
}

/// Waits until `queue` has counted `count` malformed chains and the last one matches `matches`
/// (the worker sets the counter, then the error, just after it returns the chain).
func waitChainErrors(_ queue: QueueHandle, _ count: Int, _ matches: (ChainError) -> Bool = { _ in true }) -> Bool {
  waitUntil { queue.chainErrors == count && queue.lastChainError.map(matches) == true }
}

func isUnmapped(_ e: ChainError) -> Bool {
  if case .unmapped = e { return true }
  return false
}
