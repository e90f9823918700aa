import VhostSystem

/// The driver side of a packed virtqueue in front-end-owned shared memory: one descriptor ring
/// (written by both sides, ownership by the AVAIL/USED bits against wrap counters) and the two
/// event suppression areas.
public final class PackedDriverQueue: @unchecked Sendable {
  public let size: UInt16
  public let eventIndex: Bool
  let mem: SharedMemory
  public let descOffset: UInt64
  public let driverEventOffset: UInt64
  public let deviceEventOffset: UInt64
  private let driverMemory: DriverMemory

  private var nextAvail: UInt16 = 0
  private var availWrap = true
  private var nextUsed: UInt16 = 0
  private var usedWrap = true
  private var freeIDs: [UInt16]
  private var chainLength: [Int]
  private var freeSlots: Int
  private var kickedAt: UInt16 = 0
  private var kickedWrap = true

  public init(size: UInt16, in memory: DriverMemory, eventIndex: Bool = false) throws {
    precondition(size > 0, "queue size must be positive")
    self.size = size
    self.eventIndex = eventIndex
    driverMemory = memory
    mem = memory.memory
    descOffset = try memory.allocate(16 * Int(size), alignment: 16)
    driverEventOffset = try memory.allocate(4, alignment: 4)
    deviceEventOffset = try memory.allocate(4, alignment: 4)
    try mem.fill(0, at: descOffset, count: 16 * Int(size))
    try mem.fill(0, at: driverEventOffset, count: 4)
    try mem.fill(0, at: deviceEventOffset, count: 4)
    freeIDs = (0..<size).reversed().map { $0 }
    chainLength = Array(repeating: 0, count: Int(size))
    freeSlots = Int(size)
  }

  /// Addresses for SET_VRING_ADDR: desc = ring, avail = driver area, used = device area.
  public var descUserAddr: UInt64 { driverMemory.uva(descOffset) }
  public var driverEventUserAddr: UInt64 { driverMemory.uva(driverEventOffset) }
  public var deviceEventUserAddr: UInt64 { driverMemory.uva(deviceEventOffset) }
  public var freeDescriptors: Int { freeSlots }
  /// SET_VRING_BASE for a fresh ring: index 0, both wrap counters 1.
  public static let initialBase: UInt32 = 0x8000_8000

  /// Writes a chain (device-readable buffers first) and makes it available, head flags last with
  /// release ordering. Returns the buffer id the device will complete.
  @discardableResult
  public func add(_ buffers: [DriverBuffer]) throws(QueueError) -> UInt16 {
    guard !buffers.isEmpty else { throw .emptyChain }
    guard buffers.count <= freeSlots, let id = freeIDs.popLast() else {
      throw .full(needed: buffers.count, free: freeSlots)
    }
    let head = nextAvail
    let headWrap = availWrap
    var headFlags: UInt16 = 0
    do {
      for (i, b) in buffers.enumerated() {
        let at = descOffset + UInt64(nextAvail) * 16
        var flags: UInt16 = availWrap ? PackedFlags.avail : PackedFlags.used
        if b.deviceWritable { flags |= PackedFlags.write }
        if i < buffers.count - 1 { flags |= PackedFlags.next }
        try mem.store(b.guestAddress, at: at)
        try mem.store(b.length, at: at + 8)
        try mem.store(id, at: at + 12)
        if i == 0 { headFlags = flags } else { try mem.storeRelease16(flags, at: at + 14) }
        nextAvail &+= 1
        if nextAvail == size {
          nextAvail = 0
          availWrap.toggle()
        }
      }
      _ = headWrap
      try mem.storeRelease16(headFlags, at: descOffset + UInt64(head) * 16 + 14)
    } catch {
      throw .memory(error)
    }
    chainLength[Int(id)] = buffers.count
    freeSlots -= buffers.count
    return id
  }

  /// Whether the device wants a kick for what was made available since the last one.
  public func needsKick() -> Bool {
    SharedMemory.fullFence()
    let old = kickedAt
    let oldWrap = kickedWrap
    kickedAt = nextAvail
    kickedWrap = availWrap
    guard let flags = try? mem.load(UInt16.self, at: deviceEventOffset + 2) else { return true }
    switch flags & 3 {
    case 0: return true
    case 1: return false
    default:
      guard eventIndex, let offWrap = try? mem.load(UInt16.self, at: deviceEventOffset) else { return true }
      var off = offWrap & 0x7fff
      var o = old
      let new = nextAvail
      if oldWrap != availWrap || new <= o { o = o &- size }
      if (offWrap >> 15 != 0) != availWrap { off = off &- size }
      return (new &- off &- 1) < (new &- o)
    }
  }

  /// Collects chains the device marked used.
  public func reapUsed() throws(QueueError) -> [UsedElement] {
    var out: [UsedElement] = []
    while true {
      let at = descOffset + UInt64(nextUsed) * 16
      guard let flags = try? mem.loadAcquire16(at: at + 14) else { throw .corruptUsedRing("descriptor ring") }
      let avail = flags & PackedFlags.avail != 0
      let used = flags & PackedFlags.used != 0
      guard avail == used, used == usedWrap else { break }
      guard let id = try? mem.load(UInt16.self, at: at + 12), let len = try? mem.load(UInt32.self, at: at + 8) else {
        throw .corruptUsedRing("descriptor ring")
      }
      guard id < size, chainLength[Int(id)] > 0 else {
        throw .corruptUsedRing("used id \(id) is not an outstanding buffer")
      }
      let count = chainLength[Int(id)]
      chainLength[Int(id)] = 0
      freeIDs.append(id)
      freeSlots += count
      out.append(UsedElement(head: id, length: len))
      let next = Int(nextUsed) + count
      if next >= Int(size) {
        // bounded: next < 2 * size
        nextUsed = UInt16(next - Int(size))
        usedWrap.toggle()
      } else {
        // bounded: next < size
        nextUsed = UInt16(next)
      }
    }
    return out
  }

  /// Asks the device for no interrupts (true) or for every completion (false).
  public func setInterruptsSuppressed(_ suppressed: Bool) {
    try? mem.store(UInt16(suppressed ? 1 : 0), at: driverEventOffset + 2)
  }
}
