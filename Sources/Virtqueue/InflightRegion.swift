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

  /// Bytes one queue's area takes (libvhost-user's formula, 64-byte aligned).
  public static func queueRegionSize(queueSize: Int) -> Int {
    let raw = descStateSize * queueSize + headerSize
    return (raw + 63) / 64 * 64
  }

  /// Allocates a zeroed area (GET_INFLIGHT_FD).
  public init(queueCount: Int, queueSize: Int) throws(SystemError) {
    let size = max(Self.queueRegionSize(queueSize: queueSize) * queueCount, 64)
    memory = try SharedMemory(anonymous: "vhost-user-inflight", size: size)
    self.queueCount = queueCount
    self.queueSize = queueSize
  }

  /// Adopts an area from SET_INFLIGHT_FD.
  public init(memory: SharedMemory, queueCount: Int, queueSize: Int) throws(MemoryAccessError) {
    guard Self.queueRegionSize(queueSize: queueSize) * queueCount <= memory.size else {
      throw MemoryAccessError(offset: 0, length: UInt64(Self.queueRegionSize(queueSize: queueSize) * queueCount),
        size: UInt64(memory.size))
    }
    self.memory = memory
    self.queueCount = queueCount
    self.queueSize = queueSize
  }

  func base(_ queue: Int) -> UInt64 { UInt64(queue * Self.queueRegionSize(queueSize: queueSize)) }

  /// The tracker for one queue.
  public func queue(_ index: Int) -> InflightQueue? {
    guard index >= 0, index < queueCount else { return nil }
    return InflightQueue(memory: memory, base: base(index), size: queueSize)
  }
}

/// Inflight tracking of one split queue.
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
  /// its inflight bit, that one request is cleared here (last_batch_head).
  public func recover(usedIndex: UInt16) -> [UInt16] {
    let recorded = (try? memory.load(UInt16.self, at: base + 14)) ?? usedIndex
    if recorded != usedIndex {
      if let last = try? memory.load(UInt16.self, at: base + 12), Int(last) < size {
        try? memory.store(UInt8(0), at: desc(last))
      }
      try? memory.store(usedIndex, at: base + 14)
    }
    var pending: [(UInt64, UInt16)] = []
    for i in 0..<size {
      let at = desc(UInt16(i))
      if (try? memory.load(UInt8.self, at: at)) == 1 {
        let c = (try? memory.load(UInt64.self, at: at + 8)) ?? 0
        pending.append((c, UInt16(i)))
        counter = max(counter, c)
      }
    }
    return pending.sorted { $0.0 < $1.0 }.map(\.1)
  }

  /// A chain was fetched.
  public func fetched(head: UInt16) {
    guard Int(head) < size else { return }
    counter += 1
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
