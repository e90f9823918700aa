import Foundation
import Synchronization
import VhostSystem

#if canImport(Glibc)
  import Glibc
#endif

/// A Linux TAP device as a switch port. Opened with IFF_VNET_HDR (12-byte header), so checksum
/// offload requests (NEEDS_CSUM) pass between guests and the host stack unchanged. A reader thread
/// takes frames from the TAP into the switch; frames for the TAP are written from the sender's
/// thread (one writev each, which the kernel keeps whole).
public final class NetTap: NetPort, @unchecked Sendable {
  public let name: String
  public let mtu: Int
  public var portName: String { "tap \(name)" }
  private let fd: Int32
  private let index = Atomic<Int>(-1)
  private let stopping = Atomic<Bool>(false)
  private let finished = NSCondition()
  private var running = false
  private weak var netSwitch: NetSwitch?
  private let toTap = CounterCell()
  private let fromTap = CounterCell()
  private let reasons = ReasonCounts()
  static let headerLength = 12

  // linux/if_tun.h
  static let TUNSETIFF: UInt = 0x4004_54ca
  static let TUNSETVNETHDRSZ: UInt = 0x4004_54d8
  static let IFF_TAP: Int16 = 0x0002
  static let IFF_NO_PI: Int16 = 0x1000
  static let IFF_VNET_HDR: Int16 = 0x4000

  /// Opens (creating if needed) the TAP device `name` (at most 15 bytes). Needs CAP_NET_ADMIN.
  public init(name: String, mtu: Int = 1500) throws {
    guard !name.isEmpty, name.utf8.count < 16 else { throw SystemError("TAP name must be 1...15 bytes", errno: EINVAL) }
    self.name = name
    self.mtu = mtu
    let fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK)
    guard fd >= 0 else { throw SystemError.current("open(/dev/net/tun)") }
    // struct ifreq: char ifr_name[16]; union { short ifr_flags; ... } (40 bytes in all).
    var ifr = [UInt8](repeating: 0, count: 40)
    for (i, b) in name.utf8.enumerated() { ifr[i] = b }
    let flags = Self.IFF_TAP | Self.IFF_NO_PI | Self.IFF_VNET_HDR
    ifr[16] = UInt8(truncatingIfNeeded: flags)
    ifr[17] = UInt8(truncatingIfNeeded: flags >> 8)
    let r = ifr.withUnsafeMutableBytes { ioctl(fd, Self.TUNSETIFF, $0.baseAddress!) }
    guard r == 0 else {
      let e = SystemError.current("TUNSETIFF \(name)")
      close(fd)
      throw e
    }
    var size = Int32(Self.headerLength)
    guard ioctl(fd, Self.TUNSETVNETHDRSZ, &size) == 0 else {
      let e = SystemError.current("TUNSETVNETHDRSZ")
      close(fd)
      throw e
    }
    self.fd = fd
  }

  deinit {
    stop()
    close(fd)
  }

  public var switchIndex: Int { index.load(ordering: .relaxed) }
  public func attached(to sw: NetSwitch, index i: Int) {
    netSwitch = sw
    index.store(i, ordering: .relaxed)
  }
  public var isUp: Bool { !stopping.load(ordering: .relaxed) }

  /// Starts the reader thread.
  public func start() {
    finished.withLock { running = true }
    let t = Thread { [self] in
      readLoop()
      finished.withLock {
        running = false
        finished.broadcast()
      }
    }
    t.name = "vhost-user-net-tap-\(name)"
    t.start()
  }

  /// Ends the reader thread.
  public func stop() {
    stopping.store(true, ordering: .releasing)
    finished.withLock {
      while running { _ = finished.wait(until: Date().addingTimeInterval(1)) }
    }
  }

  private func readLoop() {
    let capacity = Self.headerLength + 65536
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
    defer { buffer.deallocate() }
    let maxFrame = Ethernet.maxFrame(mtu: mtu)
    while !stopping.load(ordering: .acquiring) {
      var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
      let ready = poll(&p, 1, 200)
      if ready <= 0 { continue }
      guard let sw = netSwitch else { return }
      var burst = sw.burst(from: switchIndex)
      var c = NetCounters()
      var why: [NetDropReason: Int] = [:]
      for _ in 0..<32 {
        let n = read(fd, buffer.baseAddress, capacity)
        if n < 0 {
          if errno == EINTR { continue }
          break  // EAGAIN: nothing more for now (or the device went away)
        }
        if n == 0 { break }
        let length = Int(n)
        if length < Self.headerLength + Ethernet.headerLength {
          c.errors += 1
          why[.runt, default: 0] += 1
          continue
        }
        let header = NetHeader(UnsafeRawBufferPointer(rebasing: buffer[0..<Self.headerLength]))
        let frame = UnsafeRawBufferPointer(rebasing: buffer[Self.headerLength..<length])
        if frame.count > maxFrame {
          c.errors += 1
          why[.oversize, default: 0] += 1
          continue
        }
        if let p = header.problem(frameLength: frame.count, csumNegotiated: true) {
          c.errors += 1
          why[p, default: 0] += 1
          continue
        }
        c.packets += 1
        c.bytes += frame.count
        if let r = sw.forward(&burst, header: header, frame: frame) {
          c.drops += 1
          why[r, default: 0] += 1
        }
      }
      burst.finish()
      fromTap.add(c)
      reasons.add(why)
    }
  }

  public func enqueue(header: NetHeader, frame: UnsafeRawBufferPointer) -> NetDropReason? {
    var h = header
    h.numBuffers = 0
    h.gsoType = NetHeader.gsoNone
    h.gsoSize = 0
    h.hdrLen = 0
    h.flags &= NetHeader.needsCsum
    var bytes = (UInt64(0), UInt32(0))
    let written: Int = withUnsafeMutableBytes(of: &bytes) { hb in
      h.write(to: hb, length: Self.headerLength)
      var iov = [
        iovec(iov_base: hb.baseAddress, iov_len: Self.headerLength),
        iovec(iov_base: UnsafeMutableRawPointer(mutating: frame.baseAddress), iov_len: frame.count),
      ]
      while true {
        let n = writev(fd, &iov, 2)
        if n < 0 && errno == EINTR { continue }
        return n
      }
    }
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

  public func report() -> String {
    var lines = ["  to tap: \(toTap.value)", "  from tap: \(fromTap.value)"]
    let r = reasons.text
    if !r.isEmpty { lines.append("  dropped: \(r)") }
    return lines.joined(separator: "\n")
  }
}
