import VhostProtocol
import VhostSystem

/// The shared inflight-tracking area of GET_INFLIGHT_FD / SET_INFLIGHT_FD (split layout, as QEMU
/// and libvhost-user define it): per queue a header {features u64, version u16, desc_num u16,
/// last_batch_head u16, used_idx u16} and one 16-byte state {inflight u8, pad[5], next u16,
/// counter u64} per descriptor. The front-end keeps the memory across back-end restarts, so a new
/// back-end can resubmit exactly the requests that had not completed.
public final class InflightRegion: @unchecked Sendable {
  public let memory: SharedMemory
  public let queueCount: Int
  public let queueSize: Int
  public static let headerSize = 16
  public static let descStateSize = 16

  /// Bytes one queue's area takes: room for the packed layout (32-byte header, 32 bytes per
  /// descriptor), which also holds the split one — the ring layout is not known yet when QEMU asks
  /// for the area. 64-byte aligned.
  public static func queueRegionSize(queueSize: Int) -> Int {
    let raw = InflightPackedQueue.headerSize + InflightPackedQueue.descStateSize * queueSize
    return (raw + 63) / 64 * 64
  }

  /// Allocates a zeroed area (GET_INFLIGHT_FD).
  public init(queueCount: Int, queueSize: Int) throws(SystemError) {
    let size = max(Self.queueRegionSize(queueSize: queueSize) * queueCount, 64)
    memory = try SharedMemory(anonymous: "vhost-user-inflight", size: size)
    self.queueCount = queueCount
    self.queueSize = queueSize
  }

  /// Adopts an area from SET_INFLIGHT_FD (its counts are the front-end's: the product is checked).
  public init(memory: SharedMemory, queueCount: Int, queueSize: Int) throws(MemoryAccessError) {
    let (needed, overflow) = Self.queueRegionSize(queueSize: max(queueSize, 0)).multipliedReportingOverflow(
      by: max(queueCount, 0))
    guard !overflow, queueCount > 0, queueSize > 0, needed <= memory.size else {
      throw MemoryAccessError(
        offset: 0, length: overflow ? UInt64.max : UInt64(needed), size: UInt64(memory.size))
    }
    self.memory = memory
    self.queueCount = queueCount
    self.queueSize = queueSize
  }

  func base(_ queue: Int) -> UInt64 { UInt64(queue * Self.queueRegionSize(queueSize: queueSize)) }

  /// The packed-layout tracker for queue `index` of `ringSize` descriptors; nil when the area has
  /// no room for that queue or that many descriptors.
  public func packedQueue(_ index: Int, ringSize: UInt16) -> InflightPackedQueue? {
    guard index >= 0, index < queueCount, ringSize > 0, Int(ringSize) <= queueSize else { return nil }
    return InflightPackedQueue(memory: memory, base: base(index), size: Int(ringSize))
  }

  /// The split-layout tracker for queue `index` of `ringSize` descriptors; nil when the area has
  /// no room for that queue or that many descriptors.
  public func queue(_ index: Int, ringSize: UInt16) -> InflightQueue? {
    guard index >= 0, index < queueCount, ringSize > 0, Int(ringSize) <= queueSize else { return nil }
    return InflightQueue(memory: memory, base: base(index), size: Int(ringSize))
  }
}

/// What an inflight area left by a previous back-end holds for one queue. Every field of the area
/// is the front-end's (and a crashed back-end's) memory: it is validated against the ring before
/// anything is replayed, and an area that does not describe the ring is reset, not followed.
public enum InflightRecovery<Pending: Sendable>: Sendable {
  /// The requests to resubmit, oldest first.
  case pending(Pending)
  /// The area did not describe this ring (the reason); it was reset and nothing is resubmitted.
  case reset(String)
}

/// Inflight tracking of one split queue (`size` is the ring's).
public final class InflightQueue: @unchecked Sendable {
  let memory: SharedMemory
  let base: UInt64
  let size: Int
  private var counter: UInt64 = 0

  init(memory: SharedMemory, base: UInt64, size: Int) {
    self.memory = memory
    self.base = base
    self.size = size
  }

  func desc(_ head: UInt16) -> UInt64 { base + UInt64(InflightRegion.headerSize) + UInt64(head) * 16 }

  /// Whether the area was initialised by an earlier back-end (version 1).
  public var isInitialized: Bool { ((try? memory.load(UInt16.self, at: base + 8)) ?? 0) == 1 }

  /// Marks the area as ours for `descNum` descriptors (first start).
  public func initialize(features: UInt64, descNum: UInt16, usedIndex: UInt16) {
    try? memory.fill(0, at: base + UInt64(InflightRegion.headerSize), count: size * 16)
    try? memory.store(features, at: base)
    try? memory.store(descNum, at: base + 10)
    try? memory.store(usedIndex, at: base + 14)
    SharedMemory.fullFence()
    try? memory.store(UInt16(1), at: base + 8)
  }

  /// Requests in flight when the previous back-end stopped, oldest first. `usedIndex` is the used
  /// ring's index now: if the previous back-end published a completion but died before clearing
  /// its inflight bit, that one request is cleared here (last_batch_head). An area whose
  /// descriptor count is not the ring's, or whose inflight bytes are neither 0 nor 1, is reset
  /// (`features` are written into the fresh header).
  public func recover(usedIndex: UInt16, features: UInt64) -> InflightRecovery<[UInt16]> {
    func reset(_ reason: String) -> InflightRecovery<[UInt16]> {
      initialize(features: features, descNum: UInt16(truncatingIfNeeded: size), usedIndex: usedIndex)
      return .reset(reason)
    }
    let descNum = (try? memory.load(UInt16.self, at: base + 10)) ?? 0
    guard Int(descNum) == size else { return reset("it describes \(descNum) descriptors, the ring has \(size)") }
    let recorded = (try? memory.load(UInt16.self, at: base + 14)) ?? usedIndex
    if recorded != usedIndex {
      let last = (try? memory.load(UInt16.self, at: base + 12)) ?? 0
      guard Int(last) < size else { return reset("last_batch_head \(last) is beyond the ring") }
      try? memory.store(UInt8(0), at: desc(last))
      try? memory.store(usedIndex, at: base + 14)
    }
    var pending: [(UInt64, UInt16)] = []
    for i in 0..<size {
      let head = UInt16(truncatingIfNeeded: i)
      let at = desc(head)
      switch (try? memory.load(UInt8.self, at: at)) ?? 0 {
      case 0: continue
      case 1:
        let c = (try? memory.load(UInt64.self, at: at + 8)) ?? 0
        pending.append((c, head))
        counter = max(counter, c)
      case let v: return reset("descriptor \(i) has inflight byte \(v)")
      }
    }
    return .pending(pending.sorted { $0.0 < $1.0 }.map(\.1))
  }

  /// A chain was fetched. The counter continues from the area's largest, so it wraps by intent
  /// (a front-end may leave UInt64.max there); order is then lost for that one replay, nothing else.
  public func fetched(head: UInt16) {
    guard Int(head) < size else { return }
    counter &+= 1
    try? memory.store(counter, at: desc(head) + 8)
    try? memory.store(UInt8(1), at: desc(head))
  }

  /// About to publish the completion of `head` (before the used index moves).
  public func completing(head: UInt16) {
    guard Int(head) < size else { return }
    try? memory.store(head, at: base + 12)
  }

  /// The completion is published: clear the bit and record the used index.
  public func completed(head: UInt16, usedIndex: UInt16) {
    guard Int(head) < size else { return }
    try? memory.store(UInt8(0), at: desc(head))
    try? memory.store(usedIndex, at: base + 14)
  }
}

/// Inflight tracking of one packed queue, in the spec's QueueRegionPacked layout: a 32-byte header
/// {features u64, version u16, desc_num u16, free_head u16, old_free_head u16, used_idx u16,
/// old_used_idx u16, used_wrap_counter u8, old_used_wrap_counter u8, padding} and per ring slot a
/// DescStatePacked {inflight u8, pad u8, next u16, last u16, num u16, counter u64, id u16, flags u16,
/// len u32, addr u64}. A chain's descriptors are saved at the slots it occupied (the driver may
/// reuse those slots for used entries before it completes), linked by `next`; the head slot carries
/// `inflight`, `num` and the fetch counter.
public final class InflightPackedQueue: @unchecked Sendable {
  public static let headerSize = 32
  public static let descStateSize = 32
  let memory: SharedMemory
  let base: UInt64
  let size: Int
  private var counter: UInt64 = 0
  /// Buffer id → head slot of chains in flight.
  private var headOf: [UInt16: UInt16] = [:]

  init(memory: SharedMemory, base: UInt64, size: Int) {
    self.memory = memory
    self.base = base
    self.size = size
  }

  func entry(_ slot: UInt16) -> UInt64 { base + UInt64(Self.headerSize) + UInt64(slot) * UInt64(Self.descStateSize) }

  public var isInitialized: Bool { ((try? memory.load(UInt16.self, at: base + 8)) ?? 0) == 1 }

  public func initialize(features: UInt64, descNum: UInt16, usedIndex: UInt16, usedWrap: Bool) {
    try? memory.fill(0, at: base + UInt64(Self.headerSize), count: size * Self.descStateSize)
    try? memory.store(features, at: base)
    try? memory.store(descNum, at: base + 10)
    try? memory.store(usedIndex, at: base + 16)
    try? memory.store(UInt8(usedWrap ? 1 : 0), at: base + 20)
    SharedMemory.fullFence()
    try? memory.store(UInt16(1), at: base + 8)
  }

  /// A raw descriptor as the driver wrote it.
  public struct SavedDescriptor: Sendable {
    public var address: UInt64
    public var length: UInt32
    public var id: UInt16
    public var flags: UInt16
  }

  /// A chain was fetched from ring slot `head` with these descriptors.
  func fetched(head: UInt16, id: UInt16, descriptors: [SavedDescriptor]) {
    guard Int(head) < size, !descriptors.isEmpty, descriptors.count <= size else { return }
    counter &+= 1  // wraps by intent, as the split tracker's
    var slot = head
    for (i, d) in descriptors.enumerated() {
      let at = entry(slot)
      let next = UInt16(truncatingIfNeeded: (Int(slot) + 1) % size)
      try? memory.store(d.address, at: at + 24)
      try? memory.store(d.length, at: at + 20)
      try? memory.store(d.id, at: at + 16)
      try? memory.store(d.flags, at: at + 18)
      try? memory.store(next, at: at + 2)
      if i == descriptors.count - 1 { try? memory.store(slot, at: entry(head) + 4) }  // last
      slot = next
    }
    try? memory.store(UInt16(truncatingIfNeeded: descriptors.count), at: entry(head) + 6)
    try? memory.store(counter, at: entry(head) + 8)
    SharedMemory.fullFence()
    try? memory.store(UInt8(1), at: entry(head))
    headOf[id] = head
  }

  /// Where the previous back-end's used index stood (the front-end cannot know it for packed
  /// rings after a crash, so the restart takes it from here, as DPDK does). `recover` has checked
  /// that it lies inside the ring.
  public var recordedUsed: (index: UInt16, wrap: Bool) {
    let i = (try? memory.load(UInt16.self, at: base + 16)) ?? 0
    let w = ((try? memory.load(UInt8.self, at: base + 20)) ?? 1) != 0
    return (i % UInt16(truncatingIfNeeded: max(size, 1)), w)
  }

  /// A recovered chain is in flight again (its completion clears it).
  public func adopt(head: UInt16, id: UInt16) {
    guard Int(head) < size else { return }
    headOf[id] = head
  }

  /// The chain with buffer `id` was completed; `usedIndex`/`usedWrap` are the device's position now.
  func completed(id: UInt16, usedIndex: UInt16, usedWrap: Bool) {
    guard let head = headOf.removeValue(forKey: id) else { return }
    try? memory.store(UInt8(0), at: entry(head))
    try? memory.store(usedIndex, at: base + 16)
    try? memory.store(UInt8(usedWrap ? 1 : 0), at: base + 20)
  }

  /// Chains in flight when the previous back-end stopped, oldest first: their descriptors (as many
  /// as the ring slots each took). Validated against the ring before anything is replayed: the
  /// descriptor count, the used position, every chain's length and buffer id, and the slots of all
  /// chains together (at most the ring's size, so resuming after them stays inside the ring). An
  /// area that fails is reset (`usedIndex`/`usedWrap`: the ring's position to record) and nothing
  /// is resubmitted.
  public func recover(features: UInt64, usedIndex: UInt16, usedWrap: Bool) -> InflightRecovery<
    [(head: UInt16, descriptors: [SavedDescriptor])]
  > {
    typealias Result = InflightRecovery<[(head: UInt16, descriptors: [SavedDescriptor])]>
    func reset(_ reason: String) -> Result {
      headOf = [:]
      initialize(
        features: features, descNum: UInt16(truncatingIfNeeded: size), usedIndex: usedIndex, usedWrap: usedWrap)
      return .reset(reason)
    }
    let descNum = (try? memory.load(UInt16.self, at: base + 10)) ?? 0
    guard Int(descNum) == size else { return reset("it describes \(descNum) descriptors, the ring has \(size)") }
    let used = (try? memory.load(UInt16.self, at: base + 16)) ?? 0
    guard Int(used) < size else { return reset("used_idx \(used) is beyond the ring") }
    var pending: [(UInt64, UInt16, [SavedDescriptor])] = []
    var slots = 0
    for h in 0..<size {
      let head = UInt16(truncatingIfNeeded: h)
      let at = entry(head)
      switch (try? memory.load(UInt8.self, at: at)) ?? 0 {
      case 0: continue
      case 1: break
      case let v: return reset("slot \(h) has inflight byte \(v)")
      }
      let num = Int((try? memory.load(UInt16.self, at: at + 6)) ?? 0)
      guard num > 0, num <= size - slots else {
        return reset("slot \(h) records a chain of \(num) slots; \(size - slots) are left in the ring")
      }
      slots += num
      var slot = head
      var descriptors: [SavedDescriptor] = []
      descriptors.reserveCapacity(num)
      for _ in 0..<num {
        let e = entry(slot)
        descriptors.append(
          SavedDescriptor(
            address: (try? memory.load(UInt64.self, at: e + 24)) ?? 0,
            length: (try? memory.load(UInt32.self, at: e + 20)) ?? 0,
            id: (try? memory.load(UInt16.self, at: e + 16)) ?? 0,
            flags: (try? memory.load(UInt16.self, at: e + 18)) ?? 0))
        let next = (try? memory.load(UInt16.self, at: e + 2)) ?? 0
        guard Int(next) < size else { return reset("slot \(slot) links to slot \(next), beyond the ring") }
        slot = next
      }
      // The buffer id a chain completes with is its last descriptor's (VIRTIO 1.1 §2.8.6).
      if let id = descriptors.last?.id, Int(id) >= size {
        return reset("slot \(h) records buffer id \(id), beyond the ring")
      }
      let c = (try? memory.load(UInt64.self, at: at + 8)) ?? 0
      counter = max(counter, c)
      pending.append((c, head, descriptors))
    }
    return .pending(pending.sorted { $0.0 < $1.0 }.map { ($0.1, $0.2) })
  }
}
