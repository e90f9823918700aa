import VhostProtocol
import VhostSystem

/// The device side of a split virtqueue: descriptor table, avail ring (driver → device) and used
/// ring (device → driver) in guest memory, with acquire/release ordering on the indices.
public final class SplitDeviceRing: DeviceRing, @unchecked Sendable {
  public let configuration: RingConfiguration
  let memory: GuestMemory
  let desc: SharedMemory
  let descOffset: UInt64
  let avail: SharedMemory
  let availOffset: UInt64
  let used: SharedMemory
  let usedOffset: UInt64
  let size: UInt16
  private var lastAvail: UInt16
  private var usedIdx: UInt16
  private var signalledUsed: UInt16
  private var signalledValid = false
  /// Chains were published to the used ring since the last `needsNotification()`.
  private var usedSinceCheck = false
  public var log: DirtyLog?
  /// Inflight tracking (INFLIGHT_SHMFD), when the front-end set up an area.
  public var inflight: InflightQueue?

  public init(_ c: RingConfiguration, memory: GuestMemory) throws(ChainError) {
    guard c.size > 0, Int(c.size) <= Limits.maxQueueSize else { throw .ringNotReady("invalid size \(c.size)") }
    configuration = c
    self.memory = memory
    size = c.size
    let n = Int(c.size)
    do {
      (desc, descOffset, _) = try memory.userRange(c.descUserAddr, length: 16 * n)
      (avail, availOffset, _) = try memory.userRange(c.availUserAddr, length: 6 + 2 * n)
      (used, usedOffset, _) = try memory.userRange(c.usedUserAddr, length: 6 + 8 * n)
    } catch {
      throw .ringNotReady(error.description)
    }
    guard availOffset % 2 == 0, usedOffset % 4 == 0 else { throw .ringNotReady("misaligned ring") }
    lastAvail = c.base.availIndex
    // The used index continues from where the driver's view of it is.
    usedIdx = (try? used.loadAcquire16(at: usedOffset + 2)) ?? c.base.availIndex
    signalledUsed = usedIdx
  }

  public var base: VringBase { VringBase(split: lastAvail) }

  public func pop() throws(ChainError) -> DescriptorChain? {
    guard let availIdx = try? avail.loadAcquire16(at: availOffset + 2) else { throw .ringNotReady("avail ring") }
    let pending = availIdx &- lastAvail
    if pending == 0 { return nil }
    guard pending <= size else { throw .availIndexJump(from: lastAvail, to: availIdx, size: size) }
    guard let head = try? avail.load(UInt16.self, at: availOffset + 4 + UInt64(lastAvail % size) * 2) else {
      throw .ringNotReady("avail ring")
    }
    lastAvail &+= 1
    if configuration.eventIndex {
      // avail_event: kick me when the driver passes this index. The fence orders this store before
      // the next read of the avail index (otherwise a kick could be lost).
      storeAvailEvent(lastAvail)
    }
    do {
      let chain = try walk(head)
      inflight?.fetched(head: head)
      return chain
    } catch {
      // bounded: UInt16 widens
      if head < size { try? complete(id: UInt32(head), length: 0) }
      throw error
    }
  }

  /// The chain at `head` again (resubmitting a request recorded as in flight).
  public func resubmit(head: UInt16) throws(ChainError) -> DescriptorChain { try walk(head) }

  /// After a restart with inflight tracking: the requests between the used index and the next
  /// avail index are exactly the `pending` ones being resubmitted, so fetching continues after them.
  public func resume(afterResubmitting pending: Int) {
    lastAvail = usedIdx &+ UInt16(truncatingIfNeeded: pending)
  }

  /// The used index the device will publish next.
  public var usedIndex: UInt16 { usedIdx }

  func walk(_ head: UInt16) throws(ChainError) -> DescriptorChain {
    var builder = ChainBuilder(memory: memory, head: head)
    try walk(head, into: &builder)
    return builder.build()
  }

  /// Validates the chain at `head`, handing each buffer to `sink`.
  func walk<Sink: ChainSink>(_ head: UInt16, into builder: inout Sink) throws(ChainError) {
    // bounded: UInt16 widens
    guard head < size else { throw .headOutOfRange(UInt32(head), size: size) }
    var i = head
    var seen = 0
    while true {
      guard i < size else { throw .nextOutOfRange(i, size: size) }
      seen += 1
      guard seen <= Int(size) else { throw .loop(head: head) }
      let at = descOffset + UInt64(i) * 16
      // addr u64, then len u32 | flags u16 | next u16 in one load.
      guard let addr = try? desc.load(UInt64.self, at: at), let rest = try? desc.load(UInt64.self, at: at + 8) else {
        throw .ringNotReady("descriptor table")
      }
      let len = UInt32(truncatingIfNeeded: rest)
      let flags = UInt16(truncatingIfNeeded: rest >> 32)
      let next = UInt16(truncatingIfNeeded: rest >> 48)
      if flags & DescFlags.indirect != 0 {
        guard flags & DescFlags.next == 0 else { throw .badIndirectTable(head: head, length: len) }
        try builder.walkIndirect(address: addr, length: len)
        return
      }
      try builder.add(address: addr, length: len, writable: flags & DescFlags.write != 0)
      if flags & DescFlags.next == 0 { return }
      i = next
    }
  }

  public func popBurst(into burst: inout ChainBurst, limit: Int) throws(ChainError) {
    // Inflight tracking and dirty logging keep their per-chain bookkeeping.
    if inflight != nil || (log != nil && configuration.logUsed) {
      try popBurstOneByOne(into: &burst, limit: limit)
      return
    }
    burst.reset(for: memory)
    guard let availIdx = try? avail.loadAcquire16(at: availOffset + 2) else { throw .ringNotReady("avail ring") }
    var last = lastAvail
    let pending = availIdx &- last
    if pending == 0 { return }
    guard pending <= size else { throw .availIndexJump(from: last, to: availIdx, size: size) }
    burst.memory = memory
    defer { burst.memory = GuestMemory.empty }
    let n = min(Int(pending), limit)
    // Heads first, their descriptors prefetched: the walks below then overlap their cache misses
    // instead of taking them one after the other.
    burst.heads.removeAll(keepingCapacity: true)
    for k in 0..<n {
      guard
        let head = try? avail.load(
          UInt16.self, at: availOffset + 4 + UInt64((last &+ UInt16(truncatingIfNeeded: k)) % size) * 2)
      else {
        burst.errors.append(.ringNotReady("avail ring"))
        break
      }
      burst.heads.append(head)
      if head < size { desc.prefetch(at: descOffset + UInt64(head) * 16) }
    }
    for head in burst.heads {
      last &+= 1
      burst.taken += 1
      burst.beginChain(head)
      do {
        try walk(head, into: &burst)
        burst.finishChain(head: head, readable: burst.openReadable, writable: burst.openWritable, failed: false)
      } catch {
        burst.discardOpenSegments()
        burst.errors.append(error)
        // Returned with length 0 when it names a real descriptor; otherwise only counted.
        if head < size { burst.finishChain(head: head, readable: 0, writable: 0, failed: true) }
      }
    }
    lastAvail = last
    if configuration.eventIndex {
      // avail_event once per burst (see pop()).
      storeAvailEvent(last)
    }
  }

  public func pushBurst(_ burst: ChainBurst) throws(ChainError) {
    if inflight != nil || (log != nil && configuration.logUsed) {
      // bounded: UInt16 widens
      for i in 0..<burst.count { try complete(id: UInt32(burst.head(i)), length: burst.written(i)) }
      return
    }
    var idx = usedIdx
    do {
      for e in burst.entries {
        let slot = UInt64(idx % size)
        // bounded: UInt16 widens
        try used.store(UInt32(e.head), at: usedOffset + 4 + slot * 8)
        try used.store(e.written, at: usedOffset + 8 + slot * 8)
        idx &+= 1
      }
      usedIdx = idx
      try used.storeRelease16(idx, at: usedOffset + 2)
      if !burst.entries.isEmpty { usedSinceCheck = true }
    } catch {
      throw .ringNotReady("used ring: \(error)")
    }
  }

  public func push(_ chain: DescriptorChain, length: UInt32) throws(ChainError) {
    // bounded: UInt16 widens
    try complete(id: UInt32(chain.head), length: length)
  }

  func complete(id: UInt32, length: UInt32) throws(ChainError) {
    let slot = UInt64(usedIdx % size)
    do {
      try used.store(id, at: usedOffset + 4 + slot * 8)
      try used.store(length, at: usedOffset + 8 + slot * 8)
      inflight?.completing(head: UInt16(truncatingIfNeeded: id))
      usedIdx &+= 1
      try used.storeRelease16(usedIdx, at: usedOffset + 2)
      usedSinceCheck = true
      inflight?.completed(head: UInt16(truncatingIfNeeded: id), usedIndex: usedIdx)
    } catch {
      throw .ringNotReady("used ring: \(error)")
    }
    logUsedWrite(at: 4 &+ slot &* 8, length: 8)
    logUsedWrite(at: 2, length: 2)
  }

  /// Marks bytes `[offset, offset+length)` of the used ring in the dirty log (VHOST_VRING_F_LOG).
  /// `log_guest_addr` is the front-end's value: the sum wraps (a page beyond the log is ignored by
  /// `DirtyLog.mark`), it never traps.
  func logUsedWrite(at offset: UInt64, length: Int) {
    guard let log, configuration.logUsed else { return }
    log.mark(guestAddress: configuration.logGuestAddr &+ offset, length: length)
  }

  /// Writes avail_event (used->ring[size]) and logs it; the fence orders the store before the next
  /// read of the avail index.
  func storeAvailEvent(_ index: UInt16) {
    try? used.store(index, at: usedOffset + 4 + UInt64(size) * 8)
    logUsedWrite(at: 4 &+ UInt64(size) &* 8, length: 2)
    SharedMemory.fullFence()
  }

  public func needsNotification() -> Bool {
    // Nothing published since the last decision: nothing to interrupt for.
    guard usedSinceCheck else { return false }
    usedSinceCheck = false
    SharedMemory.fullFence()
    defer {
      signalledUsed = usedIdx
      signalledValid = true
    }
    if configuration.eventIndex {
      guard let event = try? avail.load(UInt16.self, at: availOffset + 4 + UInt64(size) * 2) else { return true }
      let old = signalledUsed
      if !signalledValid { return true }
      return (usedIdx &- event &- 1) < (usedIdx &- old)
    }
    guard let flags = try? avail.load(UInt16.self, at: availOffset) else { return true }
    return flags & 1 == 0  // VRING_AVAIL_F_NO_INTERRUPT
  }

  public func setKicksWanted(_ wanted: Bool) {
    if configuration.eventIndex {
      storeAvailEvent(lastAvail)
    } else {
      try? used.store(UInt16(wanted ? 0 : 1), at: usedOffset)  // VRING_USED_F_NO_NOTIFY
      logUsedWrite(at: 0, length: 2)
      SharedMemory.fullFence()
    }
  }

  /// Whether chains are waiting (without consuming them).
  public var hasAvailable: Bool {
    guard let availIdx = try? avail.loadAcquire16(at: availOffset + 2) else { return false }
    return availIdx != lastAvail
  }
}
