import VhostProtocol
import VhostSystem

/// Why a guest address could not be used.
public enum GuestMemoryError: Error, Hashable, Sendable, CustomStringConvertible {
  case unmapped(address: UInt64, length: UInt64, space: String)
  case overlapping(MemoryRegion)
  case tooManyRegions(limit: Int)
  case badRegion(String)

  public var description: String {
    switch self {
    case .unmapped(let a, let l, let s):
      "\(s) range 0x\(String(a, radix: 16))+\(l) is not inside mapped guest memory"
    case .overlapping(let r): "region at GPA 0x\(String(r.guestPhysAddr, radix: 16)) overlaps an existing one"
    case .tooManyRegions(let n): "more than \(n) memory regions"
    case .badRegion(let s): s
    }
  }
}

/// One mapped region of guest memory.
public struct MappedRegion: Sendable {
  public let region: MemoryRegion
  public let mapping: SharedMemory
  public var guestEnd: UInt64 { region.guestPhysAddr + region.memorySize }
  public var userEnd: UInt64 { region.userAddr + region.memorySize }
}

/// A contiguous piece of a guest buffer inside one mapping.
public struct MemorySegment: Sendable {
  public let mapping: SharedMemory
  public let offset: UInt64
  public let length: Int
  /// Guest-physical address of the segment's start (for dirty logging).
  public let guestAddress: UInt64
}

/// An immutable snapshot of the guest's memory table as the back-end mapped it. Translating a
/// guest-physical (descriptor) or front-end-virtual (ring) address checks bounds; a buffer may span
/// adjacent regions. A new table makes a new snapshot, so a worker holding the old one stays safe.
public final class GuestMemory: Sendable {
  public let regions: [MappedRegion]
  /// `regions[i].mapping`, for bursts (`BurstSegment.mapping` indexes it).
  public let mappings: [SharedMemory]
  /// Guest-physical start and end of each region (plain values: the burst path's lookups).
  let guestBounds: [(start: UInt64, end: UInt64)]

  /// No memory at all.
  static let empty = GuestMemory()

  public init(regions: [MappedRegion] = []) {
    self.regions = regions.sorted { $0.region.guestPhysAddr < $1.region.guestPhysAddr }
    mappings = self.regions.map(\.mapping)
    guestBounds = self.regions.map { ($0.region.guestPhysAddr, $0.guestEnd) }
  }

  /// Appends the segments covering `[gpa, gpa+length)` to `out` (indices into `mappings`); throws
  /// if any byte is unmapped. The allocation-free twin of `segments(guestAddress:length:)`.
  func appendSegments(guestAddress gpa: UInt64, length: Int, writable: Bool, to out: inout [BurstSegment])
    throws(GuestMemoryError)
  {
    var address = gpa
    var left = UInt64(length)
    guard gpa <= UInt64.max - left else { throw .unmapped(address: gpa, length: left, space: "guest-physical") }
    while left > 0 {
      var found = -1
      var i = 0
      while i < guestBounds.count {
        if address >= guestBounds[i].start && address < guestBounds[i].end {
          found = i
          break
        }
        i += 1
      }
      guard found >= 0 else { throw .unmapped(address: gpa, length: UInt64(length), space: "guest-physical") }
      let b = guestBounds[found]
      let offset = address - b.start
      let n = min(left, b.end - address)
      out.append(
        // bounded: an index into at most Limits.maxMemSlots mappings
        BurstSegment(mapping: Int32(found), writable: writable, offset: offset, length: Int(n), guestAddress: address))
      address += n
      left -= n
    }
  }

  /// Maps `region` from `fd` (honouring mmap_offset) and returns a snapshot with it added.
  public func adding(_ region: MemoryRegion, fd: OwnedFD, limit: Int) throws -> GuestMemory {
    guard regions.count < limit else { throw GuestMemoryError.tooManyRegions(limit: limit) }
    guard region.memorySize > 0, region.memorySize <= 1 << 46,
      region.guestPhysAddr <= UInt64.max - region.memorySize, region.userAddr <= UInt64.max - region.memorySize,
      region.mmapOffset <= UInt64(Int64.max) - region.memorySize
    else { throw GuestMemoryError.badRegion("invalid region size/addresses \(region)") }
    for r in regions {
      let gOverlap =
        region.guestPhysAddr < r.guestEnd && r.region.guestPhysAddr < region.guestPhysAddr + region.memorySize
      let uOverlap = region.userAddr < r.userEnd && r.region.userAddr < region.userAddr + region.memorySize
      if gOverlap || uOverlap { throw GuestMemoryError.overlapping(region) }
    }
    let mapping = try SharedMemory(mapping: fd, size: Int(region.memorySize), offset: region.mmapOffset)
    return GuestMemory(regions: regions + [MappedRegion(region: region, mapping: mapping)])
  }

  /// A snapshot without the region matching `region` by GPA, user address and size (REM_MEM_REG).
  public func removing(_ region: MemoryRegion) -> GuestMemory? {
    guard
      let i = regions.firstIndex(where: {
        $0.region.guestPhysAddr == region.guestPhysAddr && $0.region.userAddr == region.userAddr
          && $0.region.memorySize == region.memorySize
      })
    else { return nil }
    var r = regions
    r.remove(at: i)
    return GuestMemory(regions: r)
  }

  /// Segments covering `[gpa, gpa+length)`; throws if any byte is unmapped.
  public func segments(guestAddress gpa: UInt64, length: Int) throws(GuestMemoryError) -> [MemorySegment] {
    var out: [MemorySegment] = []
    var address = gpa
    var left = UInt64(length)
    guard gpa <= UInt64.max - left else { throw .unmapped(address: gpa, length: left, space: "guest-physical") }
    while left > 0 {
      guard let r = regions.first(where: { address >= $0.region.guestPhysAddr && address < $0.guestEnd }) else {
        throw .unmapped(address: gpa, length: UInt64(length), space: "guest-physical")
      }
      let offset = address - r.region.guestPhysAddr
      let n = min(left, r.region.memorySize - offset)
      out.append(MemorySegment(mapping: r.mapping, offset: offset, length: Int(n), guestAddress: address))
      address += n
      left -= n
    }
    return out
  }

  /// The mapping and offset of a front-end virtual address range that must lie in one region (rings).
  public func userRange(_ uva: UInt64, length: Int) throws(GuestMemoryError) -> (SharedMemory, UInt64, UInt64) {
    let len = UInt64(length)
    guard
      let r = regions.first(where: {
        uva >= $0.region.userAddr && uva < $0.userEnd && len <= $0.userEnd - uva
      })
    else { throw .unmapped(address: uva, length: len, space: "front-end virtual") }
    let offset = uva - r.region.userAddr
    return (r.mapping, offset, r.region.guestPhysAddr + offset)
  }

  /// The mapping and offset of a guest-physical range that must lie in one region (indirect tables).
  public func guestRange(_ gpa: UInt64, length: Int) throws(GuestMemoryError) -> (SharedMemory, UInt64) {
    let len = UInt64(length)
    guard
      let r = regions.first(where: {
        gpa >= $0.region.guestPhysAddr && gpa < $0.guestEnd && len <= $0.guestEnd - gpa
      })
    else { throw .unmapped(address: gpa, length: len, space: "guest-physical") }
    return (r.mapping, gpa - r.region.guestPhysAddr)
  }

  /// Copies bytes out of guest memory.
  public func read(guestAddress: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(count)
    for s in try segments(guestAddress: guestAddress, length: count) {
      guard let bytes = try? s.mapping.read(at: s.offset, count: s.length) else {
        throw .unmapped(address: guestAddress, length: UInt64(count), space: "guest-physical")
      }
      out += bytes
    }
    return out
  }
}
