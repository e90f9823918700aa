import Synchronization
import VhostProtocol
import VhostSystem

#if canImport(Glibc)
  import Glibc
#endif

/// A Linux TAP device as a switch port. Opened with IFF_VNET_HDR (12-byte header), so checksum
/// offload requests (NEEDS_CSUM) pass between guests and the host stack unchanged; with TCP
/// offloads on (TUNSETOFFLOAD), TCP GSO frames of up to 64 KiB pass too (guests that cannot take
/// them get them cut into segments, see `Segmenter`). A reader thread
/// takes frames from the TAP into the switch; frames for the TAP are written from the sender's
/// thread (one writev each, which the kernel keeps whole).
public final class NetTap: NetPort, @unchecked Sendable {
  public let name: String
  public let mtu: Int
  public var portName: String { "tap \(name)" }
  private let tap: OwnedFD
  private var fd: Int32 { tap.rawValue }
  private let index = Atomic<Int>(-1)
  private let stopping = Atomic<Bool>(false)
  private let finished = Condition()
  private var running = false
  private weak var netSwitch: NetSwitch?
  private let toTap = CounterCell()
  private let fromTap = CounterCell()
  private let reasons = ReasonCounts()
  private let segmentation = SegmentationCounts()
  static let headerLength = 12
  /// Whether the kernel took TUNSETOFFLOAD (checksum and TCP segmentation offload): it then hands
  /// us TCP GSO frames, and frames for the TAP keep their gso fields.
  public let offloads: Bool

  /// Opens (creating if needed) the TAP device `name` (at most 15 bytes) and, with `offloads`,
  /// turns on checksum and TCP segmentation offload. Needs CAP_NET_ADMIN.
  public init(name: String, mtu: Int = 1500, offloads: Bool = true) throws {
    self.name = name
    self.mtu = mtu
    // bounded: a constant (12)
    tap = try TapDevice.open(name: name, headerLength: Int32(Self.headerLength))
    self.offloads = offloads && (try? TapDevice.enableTCPOffloads(tap.rawValue)) != nil
  }

  deinit { stop() }

  public var switchIndex: Int { index.load(ordering: .relaxed) }
  public func attached(to sw: NetSwitch, index i: Int) {
    netSwitch = sw
    index.store(i, ordering: .relaxed)
  }
  public var isUp: Bool { !stopping.load(ordering: .relaxed) }

  /// Starts the reader thread.
  public func start() {
    finished.withLock { running = true }
    do {
      try SystemThread.start(name: "vhost-tap-\(name)") { [self] in
        readLoop()
        finished.withLock {
          running = false
          finished.broadcast()
        }
      }
    } catch {
      finished.withLock { running = false }
    }
  }

  /// Ends the reader thread.
  public func stop() {
    stopping.store(true, ordering: .releasing)
    finished.withLock {
      while running { _ = finished.wait(until: .after(milliseconds: 1000)) }
    }
  }

  private func readLoop() {
    let capacity = Self.headerLength + 65536 + 1024
    let buffer = PacketBuffer(capacity: capacity)
    let maxFrame = Ethernet.maxFrame(mtu: mtu)
    // What the kernel may hand us: partial checksums always, TCP GSO frames with offloads on.
    let features: VirtioFeatures = offloads ? GSOLayout.anySender : [NetFeature.csum]
    while !stopping.load(ordering: .acquiring) {
      guard TapDevice.waitReadable(fd, milliseconds: 200) else { continue }
      guard let sw = netSwitch else { return }
      var burst = sw.burst(from: switchIndex)
      var c = NetCounters()
      var why: [NetDropReason: Int] = [:]
      for _ in 0..<32 {
        let n = buffer.read(fd: fd)
        if n < 0 {
          if errno == EINTR { continue }
          break  // EAGAIN: nothing more for now (or the device went away)
        }
        if n == 0 { break }
        let length = n
        if length < Self.headerLength + Ethernet.headerLength {
          c.errors += 1
          why[.runt, default: 0] += 1
          continue
        }
        let header = NetHeader(buffer, at: 0, length: Self.headerLength)
        let frame = Self.headerLength..<length
        if let p = header.problem(buffer: buffer, frame: frame, features: features, maxFrame: maxFrame) {
          c.errors += 1
          why[p, default: 0] += 1
          continue
        }
        c.packets += 1
        c.bytes += frame.count
        if let r = sw.forward(&burst, header: header, frame: buffer, frame) {
          c.drops += 1
          why[r, default: 0] += 1
        }
      }
      burst.finish()
      fromTap.add(c)
      reasons.add(why)
    }
  }

  public func enqueue(header: NetHeader, frame buffer: PacketBuffer, _ frame: Range<Int>) -> NetDropReason? {
    var h = header
    if header.isGSO {
      guard let layout = GSOLayout.forwarded(header, buffer, frame) else {
        toTap.add(NetCounters(drops: 1))
        reasons.add(.badGSO)
        return .badGSO
      }
      if !offloads {
        var failed = 0
        Segmenter.segment(buffer, frame, layout: layout) { sh, b, range in
          if self.write(sh, b, range) != nil { failed += 1 }
        }
        segmentation.add(frames: 1, segments: layout.segments)
        return failed > 0 ? .tapWrite : nil
      }
      h = layout.passThroughHeader(header)
    } else {
      h.gsoSize = 0
      h.hdrLen = 0
    }
    h.numBuffers = 0
    h.flags &= NetHeader.needsCsum
    return write(h, buffer, frame)
  }

  /// Writes one frame behind its header (one writev); counts it.
  private func write(_ h: NetHeader, _ buffer: PacketBuffer, _ frame: Range<Int>) -> NetDropReason? {
    let hb = PacketBuffer(capacity: Self.headerLength)
    h.write(to: hb, at: 0, length: Self.headerLength)
    let written = PacketBuffer.writev(fd: fd, hb, 0..<Self.headerLength, buffer, frame)
    guard written == Self.headerLength + frame.count else {
      toTap.add(NetCounters(drops: 1))
      reasons.add(.tapWrite)
      return .tapWrite
    }
    toTap.add(NetCounters(packets: 1, bytes: frame.count))
    return nil
  }

  public func wakeReceiver() {}

  /// Frames written to the TAP (delivered to the host stack) and read from it.
  public var delivered: NetCounters { toTap.value }
  public var received: NetCounters { fromTap.value }
  public var dropReasons: [NetDropReason: Int] { reasons.value }
  /// GSO frames for the TAP cut into segments (offloads off).
  public var segmented: SegmentationCounters { segmentation.value }

  public func report() -> String {
    var lines = ["  to tap: \(toTap.value)", "  from tap: \(fromTap.value)"]
    let r = reasons.text
    if !r.isEmpty { lines.append("  dropped: \(r)") }
    let g = segmentation.value
    if g.frames > 0 { lines.append("  \(g)") }
    return lines.joined(separator: "\n")
  }
}
