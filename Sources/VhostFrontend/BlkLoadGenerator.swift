import VhostProtocol
import VhostSystem
import Virtqueue

#if canImport(Glibc)
  import Glibc
#endif

/// Drives any vhost-user-blk back-end like fio: `iodepth` requests kept in flight per queue,
/// random or sequential, reads or writes; reports IOPS, bandwidth and latency percentiles.
public final class BlkLoadGenerator: @unchecked Sendable {
  public enum Pattern: String, Sendable, CaseIterable { case randread, randwrite, read, write }

  public struct Result: Sendable {
    public var ios: Int
    public var bytes: Int
    public var seconds: Double
    public var errors: Int
    public var p50Microseconds: Double
    public var p99Microseconds: Double
    public var iops: Double { Double(ios) / seconds }
    public var megabytesPerSecond: Double { Double(bytes) / seconds / 1e6 }
  }

  struct Slot {
    var header: UInt64
    var data: UInt64
    var started: UInt64 = 0
    var head: UInt16 = 0
  }

  let device: DeviceDriver
  let pattern: Pattern
  let blockSize: Int
  let depth: Int
  let capacityBlocks: UInt64
  var slots: [[Slot]] = []
  var inflightByHead: [[Int]] = []
  var sequential: UInt64 = 0
  var rng = SystemRandomNumberGenerator()

  /// Lays out `depth` request slots per queue in the driver memory.
  public init(device: DeviceDriver, pattern: Pattern, blockSize: Int, depth: Int, capacityBytes: UInt64)
    throws(FrontendError)
  {
    guard blockSize >= 512, blockSize % 512 == 0 else { throw .invalidArgument("block size must be a multiple of 512") }
    guard depth >= 1 else { throw .invalidArgument("iodepth must be at least 1") }
    for q in device.queues where Int(q.ring.size) < depth * 3 {
      throw .invalidArgument("queue size \(q.ring.size) too small for iodepth \(depth) (3 descriptors each)")
    }
    self.device = device
    self.pattern = pattern
    self.blockSize = blockSize
    self.depth = depth
    capacityBlocks = capacityBytes / UInt64(blockSize)
    guard capacityBlocks > 0 else { throw .invalidArgument("disk smaller than one block") }
    for q in device.queues {
      var s: [Slot] = []
      for _ in 0..<depth {
        s.append(
          Slot(header: try device.allocate(32, alignment: 32), data: try device.allocate(blockSize, alignment: 4096)))
      }
      slots.append(s)
      inflightByHead.append(Array(repeating: -1, count: Int(q.ring.size)))
    }
  }

  static func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
  }

  func nextBlock() -> UInt64 {
    switch pattern {
    case .randread, .randwrite: return UInt64.random(in: 0..<capacityBlocks, using: &rng)
    case .read, .write:
      defer { sequential = (sequential + 1) % capacityBlocks }
      return sequential
    }
  }

  func submit(queue qi: Int, slot si: Int) throws(FrontendError) {
    let q = device.queues[qi]
    let mem = device.memory.memory
    let g = device.memory
    var slot = slots[qi][si]
    let write = pattern == .write || pattern == .randwrite
    let sector = nextBlock() * UInt64(blockSize / 512)
    do {
      try mem.store(UInt32(write ? 1 : 0), at: slot.header)
      try mem.store(UInt32(0), at: slot.header + 4)
      try mem.store(sector, at: slot.header + 8)
      try mem.store(UInt8(0xff), at: slot.header + 16)
      slot.head = try q.ring.add([
        DriverBuffer(guestAddress: g.gpa(slot.header), length: 16, deviceWritable: false),
        // bounded: the block size is validated by `bench blk` (at most 1 MiB)
        DriverBuffer(guestAddress: g.gpa(slot.data), length: UInt32(blockSize), deviceWritable: !write),
        DriverBuffer(guestAddress: g.gpa(slot.header + 16), length: 1, deviceWritable: true),
      ])
    } catch {
      throw .invalidArgument("\(error)")
    }
    slot.started = Self.now()
    slots[qi][si] = slot
    inflightByHead[qi][Int(slot.head)] = si
  }

  /// Runs for `seconds` and returns the measurements.
  public func run(seconds: Double) throws(FrontendError) -> Result {
    var latencies: [UInt32] = []
    latencies.reserveCapacity(1 << 20)
    var ios = 0
    var errors = 0
    for qi in device.queues.indices {
      for si in 0..<depth { try submit(queue: qi, slot: si) }
      do { try device.queues[qi].kick.signal() } catch { throw .system(error) }
    }
    let start = Self.now()
    let end = start + UInt64(seconds * 1e9)
    var now = start
    while now < end {
      var progressed = false
      for (qi, q) in device.queues.enumerated() {
        let used: [UsedElement]
        do { used = try q.ring.reapUsed() } catch { throw .invalidReply(request: "used ring", reason: "\(error)") }
        if used.isEmpty { continue }
        progressed = true
        now = Self.now()
        // Account for the whole batch before resubmitting: new requests reuse the freed heads.
        var done: [Int] = []
        for u in used {
          let si = inflightByHead[qi][Int(u.head)]
          guard si >= 0 else { continue }
          inflightByHead[qi][Int(u.head)] = -1
          let status = (try? device.memory.memory.load(UInt8.self, at: slots[qi][si].header + 16)) ?? 0xff
          if status != 0 { errors += 1 }
          ios += 1
          let started = slots[qi][si].started
          latencies.append(UInt32(clamping: (now > started ? now - started : 0) / 1000))
          done.append(si)
        }
        for si in done { try submit(queue: qi, slot: si) }
        do { try q.notifyIfNeeded() } catch { throw .system(error) }
      }
      if !progressed {
        // Wait for an interrupt from any queue (bounded, so a stalled back-end cannot hang us).
        _ = device.queues[0].call.wait(timeoutMilliseconds: 1)
        for q in device.queues { q.call.drain() }
      }
      now = Self.now()
    }
    let elapsed = Double(Self.now() - start) / 1e9
    // Let the in-flight requests finish so the back-end is left idle.
    for q in device.queues { _ = try? q.waitUsed(timeoutMilliseconds: 2000) }
    latencies.sort()
    func pct(_ p: Double) -> Double {
      latencies.isEmpty ? 0 : Double(latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))])
    }
    return Result(
      ios: ios, bytes: ios * blockSize, seconds: elapsed, errors: errors, p50Microseconds: pct(0.5),
      p99Microseconds: pct(0.99))
  }
}
