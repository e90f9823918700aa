import VhostProtocol
import VhostSystem

/// A piece of guest memory backed by a file descriptor, as the front-end announces it.
public struct GuestRegion: Sendable {
  public var guestPhysAddr: UInt64
  public var size: UInt64
  /// Where the front-end has it mapped (ring addresses are given in this space).
  public var userAddr: UInt64
  /// Offset of the region inside `fd`.
  public var mmapOffset: UInt64
  public var fd: OwnedFD

  public init(guestPhysAddr: UInt64, size: UInt64, userAddr: UInt64, mmapOffset: UInt64, fd: OwnedFD) {
    self.guestPhysAddr = guestPhysAddr
    self.size = size
    self.userAddr = userAddr
    self.mmapOffset = mmapOffset
    self.fd = fd
  }

  /// A region covering a whole shared mapping.
  public init(_ memory: SharedMemory, guestPhysAddr: UInt64) {
    self.init(
      guestPhysAddr: guestPhysAddr, size: UInt64(memory.size), userAddr: memory.address,
      mmapOffset: memory.fileOffset, fd: memory.fd)
  }

  public var wire: MemoryRegion {
    MemoryRegion(guestPhysAddr: guestPhysAddr, memorySize: size, userAddr: userAddr, mmapOffset: mmapOffset)
  }

  /// Same region as far as REM_MEM_REG matching goes (GPA, UVA, size).
  func sameRange(as other: GuestRegion) -> Bool {
    guestPhysAddr == other.guestPhysAddr && userAddr == other.userAddr && size == other.size
  }

  /// Merges regions that are contiguous in guest-physical, user and file-offset space *and* share
  /// one descriptor; regions backed by different descriptors are never merged.
  public static func merged(_ regions: [GuestRegion]) -> [GuestRegion] {
    let sorted = regions.sorted { $0.guestPhysAddr < $1.guestPhysAddr }
    var out: [GuestRegion] = []
    for r in sorted {
      if var last = out.last, last.fd === r.fd, last.guestPhysAddr &+ last.size == r.guestPhysAddr,
        last.userAddr &+ last.size == r.userAddr, last.mmapOffset &+ last.size == r.mmapOffset
      {
        last.size += r.size
        out[out.count - 1] = last
      } else {
        out.append(r)
      }
    }
    return out
  }
}
