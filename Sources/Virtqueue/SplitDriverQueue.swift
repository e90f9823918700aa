import VhostSystem

/// One buffer of a descriptor chain, as the driver places it: guest-physical address, length,
/// and whether the device writes it.
public struct DriverBuffer: Sendable, Hashable {
  public var guestAddress: UInt64
  public var length: UInt32
  public var deviceWritable: Bool
  public init(guestAddress: UInt64, length: UInt32, deviceWritable: Bool) {
    self.guestAddress = guestAddress
    self.length = length
    self.deviceWritable = deviceWritable
  }
}

/// A completed chain as reported in the used ring.
public struct UsedElement: Sendable, Hashable {
  public var head: UInt16
  public var length: UInt32
}

/// Split-ring descriptor flags.
public enum SplitDescriptorFlags {
  public static let next: UInt16 = 1
  public static let write: UInt16 = 2
  public static let indirect: UInt16 = 4
}

public enum QueueError: Error, Sendable, CustomStringConvertible {
  case full(needed: Int, free: Int)
  case emptyChain
  case corruptUsedRing(String)
  case memory(MemoryAccessError)

  public var description: String {
    switch self {
    case .full(let n, let f): "virtqueue full: chain needs \(n) descriptors, \(f) free"
    case .emptyChain: "a descriptor chain needs at least one buffer"
    case .corruptUsedRing(let s): "device wrote an invalid used ring: \(s)"
    case .memory(let e): e.description
    }
  }
}

/// The driver side of a split virtqueue living in front-end-owned shared memory, so the front-end
/// can do I/O itself (as DPDK's virtio_user does): add chains, publish, decide whether to kick, reap.
public final class SplitDriverQueue: @unchecked Sendable {
  public let size: UInt16
  public let eventIndex: Bool
  let mem: SharedMemory
  /// Offsets of the three parts inside the driver memory.
  public let descOffset: UInt64
  public let availOffset: UInt64
  public let usedOffset: UInt64
  private let driverMemory: DriverMemory

  private var freeHead: UInt16 = 0
  private var freeCount: Int
  private var nextFree: [UInt16]
  private var chainLength: [Int]
  private var availIdx: UInt16 = 0
  private var lastKickedAvail: UInt16 = 0
  private var lastUsed: UInt16 = 0

  /// Lays out a ring of `size` entries (a power of two ≤ 32768) in `memory`.
  public init(size: UInt16, in memory: DriverMemory, eventIndex: Bool = false) throws {
    precondition(size > 0 && size & (size - 1) == 0, "queue size must be a power of two")
    self.size = size
    self.eventIndex = eventIndex
    driverMemory = memory
    mem = memory.memory
    let n = Int(size)
    descOffset = try memory.allocate(16 * n, alignment: 16)
    availOffset = try memory.allocate(6 + 2 * n, alignment: 2)
    usedOffset = try memory.allocate(6 + 8 * n, alignment: 4)
    try mem.fill(0, at: descOffset, count: 16 * n)
    try mem.fill(0, at: availOffset, count: 6 + 2 * n)
    try mem.fill(0, at: usedOffset, count: 6 + 8 * n)
    nextFree = (0..<size).map { $0 &+ 1 }
    chainLength = Array(repeating: 0, count: n)
    freeCount = n
  }

  /// Ring addresses as this process sees them (SET_VRING_ADDR carries user addresses).
  public var descUserAddr: UInt64 { driverMemory.uva(descOffset) }
  public var availUserAddr: UInt64 { driverMemory.uva(availOffset) }
  public var usedUserAddr: UInt64 { driverMemory.uva(usedOffset) }

  public var freeDescriptors: Int { freeCount }
  /// The descriptor the next `add` will use as its head (lets callers tie a buffer to a head).
  public var nextHead: UInt16 { freeHead }
  /// The next avail index the device should start from (SET_VRING_BASE).
  public var availIndex: UInt16 { availIdx }

  /// Writes a chain into the descriptor table and publishes its head in the avail ring.
  /// Device-readable buffers must precede device-writable ones. Returns the head index.
  @discardableResult
  public func add(_ buffers: [DriverBuffer]) throws(QueueError) -> UInt16 {
    guard !buffers.isEmpty else { throw .emptyChain }
    guard buffers.count <= freeCount else { throw .full(needed: buffers.count, free: freeCount) }
    let head = freeHead
    var index = head
    do {
      for (i, b) in buffers.enumerated() {
        let at = descOffset + UInt64(index) * 16
        let last = i == buffers.count - 1
        let following = nextFree[Int(index)]
        var flags: UInt16 = b.deviceWritable ? SplitDescriptorFlags.write : 0
        if !last { flags |= SplitDescriptorFlags.next }
        try mem.store(b.guestAddress, at: at)
        try mem.store(b.length, at: at + 8)
        try mem.store(flags, at: at + 12)
        try mem.store(last ? 0 : following, at: at + 14)
        if !last { index = following } else { freeHead = following }
      }
      freeCount -= buffers.count
      chainLength[Int(head)] = buffers.count
      try mem.store(head, at: availOffset + 4 + UInt64(availIdx % size) * 2)
      availIdx &+= 1
      try mem.storeRelease16(availIdx, at: availOffset + 2)
    } catch {
      throw .memory(error)
    }
    return head
  }

  /// Whether the device asked to be notified about the chains published since the last kick
  /// (EVENT_IDX: avail_event; otherwise the used ring's NO_NOTIFY flag). Call before kicking.
  public func needsKick() -> Bool {
    SharedMemory.fullFence()
    defer { lastKickedAvail = availIdx }
    if eventIndex {
      guard let event = try? mem.load(UInt16.self, at: usedOffset + 4 + UInt64(size) * 8) else { return true }
      return (availIdx &- event &- 1) < (availIdx &- lastKickedAvail)
    }
    guard let flags = try? mem.load(UInt16.self, at: usedOffset) else { return true }
    return flags & 1 == 0
  }

  /// Collects chains the device has completed and returns their descriptors to the free list.
  public func reapUsed() throws(QueueError) -> [UsedElement] {
    var result: [UsedElement] = []
    do {
      let usedIdx = try mem.loadAcquire16(at: usedOffset + 2)
      let pending = usedIdx &- lastUsed
      guard pending <= size else { throw QueueError.corruptUsedRing("used index advanced by \(pending) > \(size)") }
      while lastUsed != usedIdx {
        let at = usedOffset + 4 + UInt64(lastUsed % size) * 8
        let id = try mem.load(UInt32.self, at: at)
        let len = try mem.load(UInt32.self, at: at + 4)
        // bounded: UInt16 widens
        guard id < UInt32(size), chainLength[Int(id)] > 0 else {
          throw QueueError.corruptUsedRing("used id \(id) is not an outstanding chain head")
        }
        // bounded: id < size, checked above
        release(head: UInt16(id))
        // bounded: id < size, checked above
        result.append(UsedElement(head: UInt16(id), length: len))
        lastUsed &+= 1
      }
      if eventIndex {
        try mem.store(lastUsed, at: availOffset + 4 + UInt64(size) * 2)
        SharedMemory.fullFence()
      }
    } catch let error as QueueError {
      throw error
    } catch let error as MemoryAccessError {
      throw .memory(error)
    } catch {
      throw .corruptUsedRing("\(error)")
    }
    return result
  }

  /// Publishes up to `count` one-descriptor, device-readable chains at once (a packet generator's
  /// fast path): `buffer(head)` gives the guest address and length for each head taken; the avail
  /// index is stored once, with release ordering, after all of them. Returns how many were added.
  public func addBurst(_ count: Int, buffer: (UInt16) -> (address: UInt64, length: UInt32)) throws(QueueError) -> Int {
    let n = min(count, freeCount)
    guard n > 0 else { return 0 }
    // The free list and index in locals for the burst (one access to the properties each, not one
    // per descriptor).
    var free = freeHead
    var idx = availIdx
    var taken = 0
    var lengths: [Int] = []
    swap(&lengths, &chainLength)
    defer {
      swap(&lengths, &chainLength)
      freeHead = free
      availIdx = idx
      freeCount -= taken
    }
    let links = nextFree
    do {
      for _ in 0..<n {
        let head = free
        let (address, length) = buffer(head)
        let at = descOffset + UInt64(head) * 16
        try mem.store(address, at: at)
        try mem.store(UInt64(length), at: at + 8)  // len, flags 0, next 0
        free = links[Int(head)]
        lengths[Int(head)] = 1
        taken += 1
        try mem.store(head, at: availOffset + 4 + UInt64(idx % size) * 2)
        idx &+= 1
      }
      try mem.storeRelease16(idx, at: availOffset + 2)
    } catch {
      throw .memory(error)
    }
    return n
  }

  /// Like `reapUsed`, without collecting the elements: returns how many chains completed.
  public func reclaimUsed() throws(QueueError) -> Int {
    var n = 0
    var last = lastUsed
    var free = freeHead
    var freed = 0
    var lengths: [Int] = []
    var links: [UInt16] = []
    swap(&lengths, &chainLength)
    swap(&links, &nextFree)
    defer {
      swap(&lengths, &chainLength)
      swap(&links, &nextFree)
      lastUsed = last
      freeHead = free
      freeCount += freed
    }
    do {
      let usedIdx = try mem.loadAcquire16(at: usedOffset + 2)
      let pending = usedIdx &- last
      guard pending <= size else { throw QueueError.corruptUsedRing("used index advanced by \(pending) > \(size)") }
      while last != usedIdx {
        let id = try mem.load(UInt32.self, at: usedOffset + 4 + UInt64(last % size) * 8)
        // bounded: UInt16 widens
        guard id < UInt32(size), lengths[Int(id)] > 0 else {
          throw QueueError.corruptUsedRing("used id \(id) is not an outstanding chain head")
        }
        // bounded: id < size, checked above
        freed += Self.release(head: UInt16(id), lengths: &lengths, links: &links, free: &free)
        last &+= 1
        n += 1
      }
      if eventIndex && n > 0 {
        try mem.store(last, at: availOffset + 4 + UInt64(size) * 2)
        SharedMemory.fullFence()
      }
    } catch let error as QueueError {
      throw error
    } catch let error as MemoryAccessError {
      throw .memory(error)
    } catch {
      throw .corruptUsedRing("\(error)")
    }
    return n
  }

  private func release(head: UInt16) {
    var free = freeHead
    freeCount += Self.release(head: head, lengths: &chainLength, links: &nextFree, free: &free)
    freeHead = free
  }

  /// Puts the chain at `head` back on the free list; returns its descriptor count.
  private static func release(head: UInt16, lengths: inout [Int], links: inout [UInt16], free: inout UInt16) -> Int {
    let count = lengths[Int(head)]
    lengths[Int(head)] = 0
    var last = head
    for _ in 1..<max(count, 1) { last = links[Int(last)] }
    // The chain's descriptors are linked through the free links already (they were taken in order).
    links[Int(last)] = free
    free = head
    return count
  }

  /// Suppresses (or re-enables) used-buffer notifications from the device (no-EVENT_IDX mode).
  public func setInterruptsSuppressed(_ suppressed: Bool) {
    try? mem.store(UInt16(suppressed ? 1 : 0), at: availOffset)
  }
}
