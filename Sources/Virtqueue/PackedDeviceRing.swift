import VhostProtocol
import VhostSystem

/// Packed-ring descriptor flags (VIRTIO 1.1 §2.8).
enum PackedFlags {
  static let next: UInt16 = 1
  static let write: UInt16 = 2
  static let indirect: UInt16 = 4
  static let avail: UInt16 = 1 << 7
  static let used: UInt16 = 1 << 15
}

/// The device side of a packed virtqueue: one descriptor ring written by both sides (the AVAIL/USED
/// flag bits against two wrap counters say who owns a slot), plus the driver's and the device's event
/// suppression areas. SET_VRING_ADDR's `avail` is the driver area and `used` the device area.
public final class PackedDeviceRing: DeviceRing, @unchecked Sendable {
  public let configuration: RingConfiguration
  let memory: GuestMemory
  let desc: SharedMemory
  let descOffset: UInt64
  let descGPA: UInt64
  let driverArea: SharedMemory
  let driverOffset: UInt64
  let deviceArea: SharedMemory
  let deviceOffset: UInt64
  let deviceGPA: UInt64
  let size: UInt16
  private var nextAvail: UInt16
  private var availWrap: Bool
  private var nextUsed: UInt16
  private var usedWrap: Bool
  private var signalledUsed: UInt16 = 0
  private var signalledValid = false
  /// Chains were published since the last `needsNotification()`.
  private var usedSinceCheck = false
  public var log: DirtyLog?
  /// Inflight tracking (INFLIGHT_SHMFD), when the front-end set up an area.
  public var inflight: InflightPackedQueue?

  public init(_ c: RingConfiguration, memory: GuestMemory) throws(ChainError) {
    guard c.size > 0, Int(c.size) <= Limits.maxQueueSize else { throw .ringNotReady("invalid size \(c.size)") }
    configuration = c
    self.memory = memory
    size = c.size
    do {
      (desc, descOffset, descGPA) = try memory.userRange(c.descUserAddr, length: 16 * Int(c.size))
      (driverArea, driverOffset, _) = try memory.userRange(c.availUserAddr, length: 4)
      (deviceArea, deviceOffset, deviceGPA) = try memory.userRange(c.usedUserAddr, length: 4)
    } catch {
      throw .ringNotReady(error.description)
    }
    guard descOffset % 16 == 0, driverOffset % 4 == 0, deviceOffset % 4 == 0 else {
      throw .ringNotReady("misaligned packed ring")
    }
    nextAvail = c.base.availIndex % c.size
    availWrap = c.base.availWrap
    nextUsed = c.base.usedIndex % c.size
    usedWrap = c.base.usedWrap
  }

  public var base: VringBase {
    VringBase(packedAvail: nextAvail, availWrap: availWrap, used: nextUsed, usedWrap: usedWrap)
  }

  func slot(_ i: UInt16) -> UInt64 { descOffset + UInt64(i) * 16 }

  /// Whether the descriptor at `i` was made available for the current wrap.
  func isAvailable(_ flags: UInt16) -> Bool {
    (flags & PackedFlags.avail != 0) == availWrap && (flags & PackedFlags.used != 0) != availWrap
  }

  public var hasAvailable: Bool {
    guard let flags = try? desc.loadAcquire16(at: slot(nextAvail) + 14) else { return false }
    return isAvailable(flags)
  }

  public func pop() throws(ChainError) -> DescriptorChain? {
    guard let headFlags = try? desc.loadAcquire16(at: slot(nextAvail) + 14) else { throw .ringNotReady("descriptors") }
    guard isAvailable(headFlags) else { return nil }
    var builder = ChainBuilder(memory: memory, head: nextAvail)
    let headSlot = nextAvail
    var i = nextAvail
    var count = 0
    var id: UInt16 = 0
    var saved: [InflightPackedQueue.SavedDescriptor] = []
    do throws(ChainError) {
      while true {
        // A chain never takes more slots than the ring has (one that does not end is refused
        // having taken exactly `size`).
        guard count < Int(size) else { throw ChainError.tooLong(head: builder.head, limit: Int(size)) }
        count += 1
        let at = slot(i)
        guard let addr = try? desc.load(UInt64.self, at: at), let len = try? desc.load(UInt32.self, at: at + 8),
          let descID = try? desc.load(UInt16.self, at: at + 12), let flags = try? desc.load(UInt16.self, at: at + 14)
        else { throw ChainError.ringNotReady("descriptors") }
        id = descID
        if inflight != nil {
          saved.append(.init(address: addr, length: len, id: descID, flags: flags))
        }
        i = i &+ 1 == size ? 0 : i &+ 1
        if flags & PackedFlags.indirect != 0 {
          guard flags & PackedFlags.next == 0, builder.readable.isEmpty && builder.writable.isEmpty else {
            throw ChainError.badIndirectTable(head: builder.head, length: len)
          }
          try walkIndirect(&builder, address: addr, length: len)
          break
        }
        try builder.add(address: addr, length: len, writable: flags & PackedFlags.write != 0)
        if flags & PackedFlags.next == 0 { break }
      }
    } catch {
      // Give the buffer back (as far as we walked) so the driver is not left waiting, then report.
      advanceAvail(by: count)
      try? publishUsed(id: id, length: 0, descriptors: count)
      throw error
    }
    advanceAvail(by: count)
    inflight?.fetched(head: headSlot, id: id, descriptors: saved)
    return DescriptorChain(head: id, readable: builder.readable, writable: builder.writable, ringDescriptors: count)
  }

  /// Rebuilds a chain recorded as in flight by a previous back-end (resubmission after a restart).
  public func rebuild(_ saved: [InflightPackedQueue.SavedDescriptor], head: UInt16) throws(ChainError)
    -> DescriptorChain
  {
    var builder = ChainBuilder(memory: memory, head: head)
    for d in saved {
      if d.flags & PackedFlags.indirect != 0 {
        try walkIndirect(&builder, address: d.address, length: d.length)
      } else {
        try builder.add(address: d.address, length: d.length, writable: d.flags & PackedFlags.write != 0)
      }
    }
    return DescriptorChain(
      head: saved.last?.id ?? 0, readable: builder.readable, writable: builder.writable, ringDescriptors: saved.count)
  }

  /// After a restart with inflight tracking: the recovered chains occupy the slots from the used
  /// position on, so fetching continues after them.
  /// `slots` beyond the ring (an inflight area that does not describe this ring) is refused.
  public func resume(usedIndex: UInt16, usedWrap: Bool, afterResubmitting slots: Int) throws(ChainError) {
    guard slots >= 0, slots <= Int(size) else {
      throw .ringNotReady("inflight area resubmits \(slots) slots, the ring has \(size)")
    }
    nextUsed = usedIndex % size
    self.usedWrap = usedWrap
    nextAvail = nextUsed
    availWrap = usedWrap
    advanceAvail(by: slots)
  }

  /// The device's used position (for the inflight header).
  public var usedPosition: (index: UInt16, wrap: Bool) { (nextUsed, usedWrap) }

  /// A packed indirect table: `length / 16` consecutive descriptors, no next fields, no nesting.
  func walkIndirect(_ builder: inout ChainBuilder, address: UInt64, length: UInt32) throws(ChainError) {
    guard length > 0, length % 16 == 0 else { throw .badIndirectTable(head: builder.head, length: length) }
    let entries = Int(length / 16)
    guard entries <= Limits.maxQueueSize else { throw .tooLong(head: builder.head, limit: Limits.maxQueueSize) }
    let table: SharedMemory
    let base: UInt64
    do {
      (table, base) = try memory.guestRange(address, length: Int(length))
    } catch {
      throw .unmapped("indirect table of chain \(builder.head): \(error)")
    }
    for e in 0..<entries {
      let at = base + UInt64(e) * 16
      guard let addr = try? table.load(UInt64.self, at: at), let len = try? table.load(UInt32.self, at: at + 8),
        let flags = try? table.load(UInt16.self, at: at + 14)
      else { throw .unmapped("indirect table of chain \(builder.head)") }
      guard flags & PackedFlags.indirect == 0 else { throw .nestedIndirect(head: builder.head) }
      try builder.add(address: addr, length: len, writable: flags & PackedFlags.write != 0)
    }
  }

  func advanceAvail(by n: Int) { Self.advance(&nextAvail, &availWrap, by: n, size: size) }

  /// Moves a ring position on by `n` slots (n ≥ 0), toggling the wrap counter once per lap: the
  /// position stays inside the ring whatever `n` is.
  static func advance(_ index: inout UInt16, _ wrap: inout Bool, by n: Int, size: UInt16) {
    let ringSize = Int(size)
    let step = Int(index) &+ n
    if n >= 0 && n <= ringSize {
      // The common case (a chain never takes more than the ring): at most one lap.
      if step >= ringSize {
        index = UInt16(truncatingIfNeeded: step - ringSize)
        wrap.toggle()
      } else {
        index = UInt16(truncatingIfNeeded: step)
      }
      return
    }
    let total = Int(index) + max(n, 0) % (2 * ringSize)
    if (total / ringSize) % 2 == 1 { wrap.toggle() }
    index = UInt16(truncatingIfNeeded: total % ringSize)
  }

  public func push(_ chain: DescriptorChain, length: UInt32) throws(ChainError) {
    try publishUsed(id: chain.head, length: length, descriptors: chain.ringDescriptors)
  }

  /// Writes a used descriptor at the used index (flags last, with release ordering) and moves the
  /// index on by the number of ring slots the chain took.
  func publishUsed(id: UInt16, length: UInt32, descriptors: Int) throws(ChainError) {
    let at = slot(nextUsed)
    var flags: UInt16 = usedWrap ? (PackedFlags.avail | PackedFlags.used) : 0
    if length > 0 { flags |= PackedFlags.write }
    do {
      try desc.store(id, at: at + 12)
      try desc.store(length, at: at + 8)
      try desc.storeRelease16(flags, at: at + 14)
    } catch {
      throw .ringNotReady("descriptors: \(error)")
    }
    usedSinceCheck = true
    if let log, configuration.logUsed {
      log.mark(guestAddress: descGPA &+ UInt64(nextUsed) &* 16, length: 16)
    }
    Self.advance(&nextUsed, &usedWrap, by: max(descriptors, 1), size: size)
    inflight?.completed(id: id, usedIndex: nextUsed, usedWrap: usedWrap)
  }

  public func needsNotification() -> Bool {
    // Nothing published since the last decision: nothing to interrupt for.
    guard usedSinceCheck else { return false }
    usedSinceCheck = false
    SharedMemory.fullFence()
    let old = signalledUsed
    let new = nextUsed
    let valid = signalledValid
    signalledUsed = new
    signalledValid = true
    guard let flags = try? driverArea.load(UInt16.self, at: driverOffset + 2) else { return true }
    switch flags & 3 {
    case 0: return true  // RING_EVENT_FLAGS_ENABLE
    case 1: return false  // RING_EVENT_FLAGS_DISABLE
    default:
      // RING_EVENT_FLAGS_DESC (EVENT_IDX): notify when the used index passes off_wrap.
      guard configuration.eventIndex, valid else { return true }
      guard let offWrap = try? driverArea.load(UInt16.self, at: driverOffset) else { return true }
      var off = offWrap & 0x7fff
      var o = old
      if new <= o { o = o &- size }
      if (offWrap >> 15 != 0) != usedWrap { off = off &- size }
      return (new &- off &- 1) < (new &- o)
    }
  }

  public func setKicksWanted(_ wanted: Bool) {
    try? deviceArea.store(UInt16(wanted ? 0 : 1), at: deviceOffset + 2)
    if let log, configuration.logUsed { log.mark(guestAddress: deviceGPA &+ 2, length: 2) }
    SharedMemory.fullFence()
  }

  /// Replays what `tracker` recorded as in flight (after a restart): the recovered chains, rebuilt
  /// and adopted, to resubmit first, and the ring resumed after their slots. An area that does not
  /// describe this ring is reset instead (`.reset(reason)`), and nothing is resubmitted.
  public func replay(_ tracker: InflightPackedQueue, features: UInt64) -> InflightRecovery<[DescriptorChain]> {
    let position = usedPosition
    switch tracker.recover(features: features, usedIndex: position.index, usedWrap: position.wrap) {
    case .reset(let reason): return .reset(reason)
    case .pending(let pending):
      var slots = 0
      var chains: [DescriptorChain] = []
      for p in pending {
        if let chain = try? rebuild(p.descriptors, head: p.head) {
          chains.append(chain)
          tracker.adopt(head: p.head, id: chain.head)
        }
        slots += p.descriptors.count
      }
      let used = tracker.recordedUsed
      do {
        try resume(usedIndex: used.index, usedWrap: used.wrap, afterResubmitting: slots)
      } catch {
        return .reset("\(error)")
      }
      return .pending(chains)
    }
  }
}
