import VhostSystem

/// Memory the front-end owns and shares with the back-end as "guest RAM": one memfd mapped in this
/// process, seen by the back-end at guest-physical address `guestBase`. A bump allocator hands out
/// aligned chunks for rings and buffers.
public final class DriverMemory: @unchecked Sendable {
  public let memory: SharedMemory
  /// Guest-physical address of offset 0.
  public let guestBase: UInt64
  private var next: UInt64 = 0

  public init(size: Int, guestBase: UInt64 = 0, name: String = "vhost-user-guest-ram") throws(SystemError) {
    memory = try SharedMemory(anonymous: name, size: size)
    self.guestBase = guestBase
  }

  public var size: Int { memory.size }

  /// The region to announce in SET_MEM_TABLE / ADD_MEM_REG.
  public var regionAddresses: (guestPhysAddr: UInt64, size: UInt64, userAddr: UInt64) {
    (guestBase, UInt64(memory.size), memory.address)
  }

  public struct OutOfMemory: Error, CustomStringConvertible {
    public let requested: Int
    public var description: String { "driver memory exhausted (asked for \(requested) bytes)" }
  }

  /// Reserves `length` bytes aligned to `alignment`; returns the offset.
  public func allocate(_ length: Int, alignment: Int = 64) throws(OutOfMemory) -> UInt64 {
    let a = UInt64(alignment)
    let start = (next + a - 1) / a * a
    guard length >= 0, start + UInt64(length) <= UInt64(memory.size) else { throw OutOfMemory(requested: length) }
    next = start + UInt64(length)
    return start
  }

  /// Guest-physical address of `offset`.
  public func gpa(_ offset: UInt64) -> UInt64 { guestBase + offset }
  /// This process's virtual address of `offset` (what ring addresses are sent as).
  public func uva(_ offset: UInt64) -> UInt64 { memory.address + offset }
}
