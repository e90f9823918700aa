import Synchronization
import VhostSystem

#if canImport(Glibc)
  import Glibc
#endif

/// Packet counters (of one queue, one port, or a total).
public struct NetCounters: Sendable, Equatable, CustomStringConvertible {
  public var packets = 0
  public var bytes = 0
  public var drops = 0
  public var errors = 0
  public init(packets: Int = 0, bytes: Int = 0, drops: Int = 0, errors: Int = 0) {
    self.packets = packets
    self.bytes = bytes
    self.drops = drops
    self.errors = errors
  }

  public static func + (a: Self, b: Self) -> Self {
    Self(
      packets: a.packets + b.packets, bytes: a.bytes + b.bytes, drops: a.drops + b.drops, errors: a.errors + b.errors)
  }

  public var isZero: Bool { self == Self() }

  public var description: String { "packets \(packets) bytes \(bytes) drops \(drops) errors \(errors)" }
}

/// Counters updated from worker threads and read from any thread.
final class CounterCell: Sendable {
  let packets = Atomic<Int>(0)
  let bytes = Atomic<Int>(0)
  let drops = Atomic<Int>(0)
  let errors = Atomic<Int>(0)

  func add(_ c: NetCounters) {
    if c.packets != 0 { packets.add(c.packets, ordering: .relaxed) }
    if c.bytes != 0 { bytes.add(c.bytes, ordering: .relaxed) }
    if c.drops != 0 { drops.add(c.drops, ordering: .relaxed) }
    if c.errors != 0 { errors.add(c.errors, ordering: .relaxed) }
  }

  var value: NetCounters {
    NetCounters(
      packets: packets.load(ordering: .relaxed), bytes: bytes.load(ordering: .relaxed),
      drops: drops.load(ordering: .relaxed), errors: errors.load(ordering: .relaxed))
  }
}

/// Drop reasons counted per port.
final class ReasonCounts: Sendable {
  private let counts = Locked<[NetDropReason: Int]>([:])

  func add(_ r: NetDropReason, _ n: Int = 1) { counts.withLock { $0[r, default: 0] += n } }
  func add(_ other: [NetDropReason: Int]) {
    guard !other.isEmpty else { return }
    counts.withLock { c in for (r, n) in other { c[r, default: 0] += n } }
  }
  var value: [NetDropReason: Int] { counts.withLock { $0 } }
  func clear() { counts.withLock { $0 = [:] } }

  var text: String {
    let v = value
    return NetDropReason.allCases.compactMap { r in v[r].map { "\(r) \($0)" } }.joined(separator: ", ")
  }
}

/// A port of a `NetSwitch`: a vhost-user socket (`NetDevice`) or a TAP device (`NetTap`).
public protocol NetPort: AnyObject, Sendable {
  /// A name for reports ("socket /tmp/a.sock", "tap tap0").
  var portName: String { get }
  /// Whether the port takes frames now (a front-end runs its receive ring; a TAP is open).
  var isUp: Bool { get }
  /// Queues one frame (with its virtio-net header, whose num_buffers is ignored) for the port's
  /// receiver, from any thread. Returns why it was dropped, or nil when it was taken.
  func enqueue(header: NetHeader, frame buffer: PacketBuffer, _ frame: Range<Int>) -> NetDropReason?
  /// Frames were queued by `enqueue`: make sure the receiver gets to them.
  func wakeReceiver()
  /// Counters as text (per queue), for SIGUSR1 and the exit report.
  func report() -> String
  /// Set by the switch when the port is added.
  var switchIndex: Int { get }
  func attached(to sw: NetSwitch, index: Int)
}

/// A learning L2 switch between ports, or one of DPDK testpmd's forwarding modes.
///
/// Threading: frames enter from each port's own thread(s) (a vhost-user port's transmit queue
/// workers, a TAP's reader). Routing reads and updates the MAC table under one lock; delivery
/// copies the frame into the destination port's bounded, locked queue of pending frames, which
/// that port drains into its receive ring when its receive queue is serviced. With `--poll` the
/// receive rings are serviced continuously; otherwise `wakeReceivers` makes a waker thread service
/// the destination's rings (see `ReceiveWaker`).
public final class NetSwitch: @unchecked Sendable {
  public enum Forwarding: String, Sendable, CaseIterable {
    /// A learning switch between all ports.
    case `switch`
    /// Count and drop what the driver transmits.
    case rxonly
    /// Fill every receive buffer with generated frames.
    case txonly
    /// Port pairs: 0↔1, 2↔3, ... (an odd last port forwards to itself).
    case io
  }

  public let forwarding: Forwarding
  /// Seconds a learned MAC address stays valid without traffic from it.
  public let ageingSeconds: Double
  /// Largest number of learned addresses (a guest inventing source addresses cannot grow it further).
  public let tableLimit: Int
  let waker: ReceiveWaker?

  private struct Entry {
    var port: Int
    var seen: UInt64
  }
  private struct WeakPort {
    weak var port: (any NetPort)?
  }
  private let table = Locked<[UInt64: Entry]>([:])
  private let portList = Locked<[WeakPort]>([])

  /// `wakeReceivers`: service a destination port's rings from a waker thread after frames were
  /// queued for it (needed unless every port's rings are busy-polled).
  public init(
    forwarding: Forwarding = .switch, ageingSeconds: Double = 300, tableLimit: Int = 4096, wakeReceivers: Bool = true
  ) {
    self.forwarding = forwarding
    self.ageingSeconds = ageingSeconds
    self.tableLimit = tableLimit
    waker = wakeReceivers ? ReceiveWaker() : nil
  }

  deinit { waker?.stop() }

  /// Ends the waker thread (the switch forwards nothing afterwards in interrupt mode).
  public func shutdown() { waker?.stop() }

  /// Adds a port; returns its index.
  @discardableResult
  public func add(_ port: any NetPort) -> Int {
    let index = portList.withLock { list in
      list.append(WeakPort(port: port))
      return list.count - 1
    }
    port.attached(to: self, index: index)
    return index
  }

  /// The ports, by index (nil where a port has gone away).
  public var ports: [(any NetPort)?] { portList.withLock { $0.map(\.port) } }

  /// The port a MAC address was learned on (nil when unknown or aged out).
  public func port(of mac: [UInt8]) -> Int? {
    guard mac.count == 6 else { return nil }
    let key = mac.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    let now = Self.now()
    return table.withLock { t in
      guard let e = t[key], now &- e.seen < ageNanoseconds else { return nil }
      return e.port
    }
  }

  /// Forgets every address learned on `port` (its front-end went away).
  public func forget(port: Int) { table.withLock { t in t = t.filter { $0.value.port != port } } }

  /// Number of learned addresses.
  public var learnedCount: Int { table.withLock { $0.count } }

  var ageNanoseconds: UInt64 { UInt64(max(0, ageingSeconds) * 1e9) }

  static func now() -> UInt64 { Deadline.now() }

  /// One burst of frames from one port: the ports snapshot, the time, and who got frames.
  struct Burst {
    let source: Int
    let ports: [(any NetPort)?]
    let now: UInt64
    var touched: [Bool]

    /// Wakes every port that got frames.
    func finish() {
      for (i, t) in touched.enumerated() where t { ports[i]?.wakeReceiver() }
    }
  }

  func burst(from source: Int) -> Burst {
    let p = ports
    return Burst(source: source, ports: p, now: Self.now(), touched: Array(repeating: false, count: p.count))
  }

  /// Routes one frame of a burst: learns its source address and delivers it. Returns why it was
  /// dropped, or nil when at least one port took it.
  func forward(_ burst: inout Burst, header: NetHeader, frame buffer: PacketBuffer, _ frame: Range<Int>)
    -> NetDropReason?
  {
    let source = burst.source
    switch forwarding {
    case .rxonly, .txonly: return .noDestination
    case .io:
      let dest = source ^ 1 < burst.ports.count ? source ^ 1 : source
      return deliver(&burst, to: dest, header: header, frame: buffer, frame)
    case .switch:
      guard frame.count >= Ethernet.headerLength else { return .runt }
      let dst = buffer.u48be(at: frame.lowerBound)
      let src = buffer.u48be(at: frame.lowerBound + 6)
      let multicast = buffer[frame.lowerBound] & 1 != 0
      let now = burst.now
      let age = ageNanoseconds
      let learnSource = buffer[frame.lowerBound + 6] & 1 == 0 && src != 0
      let destination: Int? = table.withLock { t in
        if learnSource { learn(&t, src, port: source, now: now, age: age) }
        guard !multicast, let e = t[dst], now &- e.seen < age else { return nil }
        return e.port
      }
      if let destination {
        if destination == source { return .noDestination }
        return deliver(&burst, to: destination, header: header, frame: buffer, frame)
      }
      var taken = false
      for i in burst.ports.indices where i != source {
        if deliver(&burst, to: i, header: header, frame: buffer, frame) == nil { taken = true }
      }
      return taken ? nil : .noDestination
    }
  }

  private func learn(_ t: inout [UInt64: Entry], _ mac: UInt64, port: Int, now: UInt64, age: UInt64) {
    if let e = t[mac], e.port == port, now &- e.seen < 1_000_000_000 { return }
    if t[mac] == nil && t.count >= tableLimit {
      t = t.filter { now &- $0.value.seen < age }
      if t.count >= tableLimit { return }
    }
    t[mac] = Entry(port: port, seen: now)
  }

  private func deliver(
    _ burst: inout Burst, to index: Int, header: NetHeader, frame buffer: PacketBuffer, _ frame: Range<Int>
  ) -> NetDropReason? {
    guard let port = burst.ports[index] else { return .portDown }
    guard port.isUp else { return .portDown }
    if let r = port.enqueue(header: header, frame: buffer, frame) { return r }
    burst.touched[index] = true
    return nil
  }

  /// SEND_RARP: emits a RARP announcement for `mac` from port `source` on the other ports (what
  /// QEMU's announce-self would have the guest send), and learns `mac` there.
  public func announce(mac: [UInt8], from source: Int) {
    guard mac.count == 6 else { return }
    var frame = [UInt8](repeating: 0xff, count: 6) + mac + [0x80, 0x35]
    frame += [0, 1, 0x08, 0x00, 6, 4, 0, 3]  // Ethernet, IPv4, hlen 6, plen 4, reverse request
    frame += mac + [0, 0, 0, 0] + mac + [0, 0, 0, 0]
    frame += [UInt8](repeating: 0, count: 60 - frame.count)
    guard forwarding == .switch else { return }
    let buffer = PacketBuffer(capacity: frame.count)
    buffer.set(frame, at: 0)
    var b = burst(from: source)
    _ = forward(&b, header: NetHeader(), frame: buffer, 0..<frame.count)
    b.finish()
  }

  /// Every port's counters.
  public func report() -> String {
    var lines: [String] = []
    for (i, p) in ports.enumerated() {
      guard let p else { continue }
      lines.append("port \(i) (\(p.portName)): \(p.isUp ? "up" : "down")")
      lines.append(p.report())
    }
    return lines.joined(separator: "\n")
  }
}

/// Services a destination port's rings from a thread of its own after frames were queued for it,
/// so frames do not wait for the destination's next kick (in interrupt mode its worker sleeps in
/// epoll). Requests coalesce: a port is serviced once for any number of requests made meanwhile.
final class ReceiveWaker: @unchecked Sendable {
  private let condition = Condition()
  private var pending: [ObjectIdentifier: NetDevice] = [:]
  private var stopping = false
  private var running = false
  private var threadStarted = false
  private var thread: pthread_t?

  func request(_ device: NetDevice) {
    condition.withLock {
      guard !stopping else { return }
      pending[ObjectIdentifier(device)] = device
      if !threadStarted {
        threadStarted = true
        running = true
        do {
          try SystemThread.start(name: "vhost-net-waker") { [self] in run() }
        } catch {
          threadStarted = false
          running = false
        }
      }
      condition.signal()
    }
  }

  private func run() {
    condition.withLock { thread = pthread_self() }
    while true {
      let batch: [NetDevice]? = condition.withLock {
        while pending.isEmpty && !stopping { condition.wait() }
        if stopping { return nil }
        defer { pending.removeAll(keepingCapacity: true) }
        return Array(pending.values)
      }
      guard let batch else { break }
      for d in batch { d.serviceRings() }
    }
    condition.withLock {
      running = false
      pending = [:]
      condition.broadcast()
    }
  }

  func stop() {
    condition.withLock {
      stopping = true
      condition.broadcast()
      // Called on the waker thread itself (the last reference went away there): do not wait.
      if let thread, pthread_equal(thread, pthread_self()) != 0 { return }
      while running { _ = condition.wait(until: .after(milliseconds: 1000)) }
    }
  }
}
