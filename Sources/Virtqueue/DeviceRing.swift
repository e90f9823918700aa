import VhostProtocol
import VhostSystem

/// Where a ring lives and how it behaves, as SET_VRING_NUM/ADDR/BASE and the features said.
public struct RingConfiguration: Sendable {
  public var size: UInt16
  public var descUserAddr: UInt64
  public var availUserAddr: UInt64
  public var usedUserAddr: UInt64
  /// VHOST_VRING_F_LOG set: used-ring writes are logged at `logGuestAddr`.
  public var logUsed: Bool
  public var logGuestAddr: UInt64
  public var eventIndex: Bool
  public var packed: Bool
  public var base: VringBase

  public init(
    size: UInt16, desc: UInt64, avail: UInt64, used: UInt64, logUsed: Bool = false,
    logGuestAddr: UInt64 = 0, eventIndex: Bool, packed: Bool, base: VringBase
  ) {
    self.size = size
    descUserAddr = desc
    availUserAddr = avail
    usedUserAddr = used
    self.logUsed = logUsed
    self.logGuestAddr = logGuestAddr
    self.eventIndex = eventIndex
    self.packed = packed
    self.base = base
  }
}

/// The device side of a virtqueue (split or packed): take available chains, return used ones,
/// decide whether to notify the driver. One thread uses a ring at a time.
public protocol DeviceRing: AnyObject, Sendable {
  var configuration: RingConfiguration { get }
  /// The next chain the driver made available, nil when there is none. A malformed chain is
  /// returned to the driver as used with length 0 and reported as an error.
  func pop() throws(ChainError) -> DescriptorChain?
  /// Completes `chain` with `length` bytes written.
  func push(_ chain: DescriptorChain, length: UInt32) throws(ChainError)
  /// Whether the driver wants an interrupt for what was pushed since the last notification.
  func needsNotification() -> Bool
  /// Asks the driver for kicks (true) or tells it not to bother (false, polling).
  func setKicksWanted(_ wanted: Bool)
  /// Where the ring stands (GET_VRING_BASE).
  var base: VringBase { get }
  /// Whether the driver made chains available that were not popped yet (polling).
  var hasAvailable: Bool { get }
  /// Dirty log for used-ring and buffer writes, when logging is on.
  var log: DirtyLog? { get set }
  /// Takes up to `limit` available chains into `burst` (emptied first). Malformed chains are kept
  /// as failed entries (returned with length 0 by `pushBurst`) or, when they cannot be returned,
  /// only listed in `burst.errors`. Throws when the ring itself is unusable.
  func popBurst(into burst: inout ChainBurst, limit: Int) throws(ChainError)
  /// Completes every chain of `burst` with its `setWritten` length.
  func pushBurst(_ burst: ChainBurst) throws(ChainError)
}

extension DeviceRing {
  public func popBurst(into burst: inout ChainBurst, limit: Int) throws(ChainError) {
    try popBurstOneByOne(into: &burst, limit: limit)
  }

  public func pushBurst(_ burst: ChainBurst) throws(ChainError) {
    precondition(burst.chains.count == burst.count, "a burst not taken chain by chain")
    for i in 0..<burst.count { try push(burst.chains[i], length: burst.written(i)) }
  }

  /// The burst path of rings without one of their own: `pop()` chain by chain.
  func popBurstOneByOne(into burst: inout ChainBurst, limit: Int) throws(ChainError) {
    burst.reset(for: nil)
    // Malformed chains count against the limit too: a driver publishing nothing else cannot keep
    // this loop (or the error list) going.
    while burst.taken < limit {
      do {
        guard let chain = try pop() else { return }
        burst.append(chain)
        burst.taken += 1
      } catch {
        // pop() already returned a malformed chain to the driver.
        burst.taken += 1
        burst.errors.append(error)
        if case .availIndexJump = error { return }
        if case .ringNotReady = error { return }
      }
    }
  }
}

/// Makes the ring for `configuration` over `memory` (split or packed per the configuration).
public func makeDeviceRing(_ configuration: RingConfiguration, memory: GuestMemory) throws(ChainError) -> DeviceRing {
  if configuration.packed { return try PackedDeviceRing(configuration, memory: memory) }
  return try SplitDeviceRing(configuration, memory: memory)
}

/// Descriptor flags (split and packed share NEXT/WRITE/INDIRECT).
enum DescFlags {
  static let next: UInt16 = 1
  static let write: UInt16 = 2
  static let indirect: UInt16 = 4
}

/// Where a descriptor walk puts the buffers it validated.
protocol ChainSink {
  var memory: GuestMemory { get }
  var head: UInt16 { get }
  /// Adds one buffer descriptor (translating and bounds-checking it).
  mutating func add(address: UInt64, length: UInt32, writable: Bool) throws(ChainError)
}

extension ChainSink {
  /// Walks an indirect table of `length` bytes at `address` (split layout: addr, len, flags, next).
  mutating func walkIndirect(address: UInt64, length: UInt32) throws(ChainError) {
    guard length > 0, length % 16 == 0 else { throw .badIndirectTable(head: head, length: length) }
    let entries = Int(length / 16)
    guard entries <= Limits.maxQueueSize else { throw .tooLong(head: head, limit: Limits.maxQueueSize) }
    let table: SharedMemory
    let base: UInt64
    do {
      (table, base) = try memory.guestRange(address, length: Int(length))
    } catch {
      throw .unmapped("indirect table of chain \(head): \(error)")
    }
    var i: UInt16 = 0
    var seen = 0
    while true {
      guard Int(i) < entries else { throw .nextOutOfRange(i, size: UInt16(truncatingIfNeeded: entries)) }
      seen += 1
      guard seen <= entries else { throw .loop(head: head) }
      let at = base + UInt64(i) * 16
      guard let addr = try? table.load(UInt64.self, at: at), let len = try? table.load(UInt32.self, at: at + 8),
        let flags = try? table.load(UInt16.self, at: at + 12), let next = try? table.load(UInt16.self, at: at + 14)
      else { throw .unmapped("indirect table of chain \(head)") }
      guard flags & DescFlags.indirect == 0 else { throw .nestedIndirect(head: head) }
      try add(address: addr, length: len, writable: flags & DescFlags.write != 0)
      if flags & DescFlags.next == 0 { return }
      i = next
    }
  }
}

/// Walks one chain's descriptors (direct or via one indirect table) with every check the spec asks.
struct ChainBuilder: ChainSink {
  let memory: GuestMemory
  let head: UInt16
  var readable: [MemorySegment] = []
  var writable: [MemorySegment] = []
  var count = 0

  init(memory: GuestMemory, head: UInt16) {
    self.memory = memory
    self.head = head
  }

  /// Adds one buffer descriptor.
  mutating func add(address: UInt64, length: UInt32, writable isWritable: Bool) throws(ChainError) {
    let segs: [MemorySegment]
    do {
      segs = try memory.segments(guestAddress: address, length: Int(length))
    } catch {
      throw .unmapped("descriptor of chain \(head): \(error)")
    }
    // The first buffer's segments become the array (no copy): a one-descriptor chain costs one
    // allocation.
    if isWritable {
      if writable.isEmpty { writable = segs } else { writable += segs }
    } else {
      guard writable.isEmpty else { throw .readableAfterWritable(head: head) }
      if readable.isEmpty { readable = segs } else { readable += segs }
    }
  }

  func build(ringDescriptors: Int = 1) -> DescriptorChain {
    DescriptorChain(head: head, readable: readable, writable: writable, ringDescriptors: ringDescriptors)
  }
}
