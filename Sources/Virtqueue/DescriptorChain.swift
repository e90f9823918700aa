import VhostSystem

/// Why a descriptor chain (or a ring) was refused. The request fails; the process does not.
public enum ChainError: Error, Hashable, Sendable, CustomStringConvertible {
  case headOutOfRange(UInt32, size: UInt16)
  case nextOutOfRange(UInt16, size: UInt16)
  case loop(head: UInt16)
  case tooLong(head: UInt16, limit: Int)
  case nestedIndirect(head: UInt16)
  case badIndirectTable(head: UInt16, length: UInt32)
  case readableAfterWritable(head: UInt16)
  case unmapped(String)
  case availIndexJump(from: UInt16, to: UInt16, size: UInt16)
  case ringNotReady(String)

  public var description: String {
    switch self {
    case .headOutOfRange(let h, let s): "avail ring names descriptor \(h) in a ring of \(s)"
    case .nextOutOfRange(let n, let s): "descriptor next \(n) outside a table of \(s)"
    case .loop(let h): "descriptor chain from head \(h) loops"
    case .tooLong(let h, let l): "descriptor chain from head \(h) longer than \(l)"
    case .nestedIndirect(let h): "indirect descriptor inside an indirect table (head \(h))"
    case .badIndirectTable(let h, let l): "indirect table of \(l) bytes is not a multiple of 16 (head \(h))"
    case .readableAfterWritable(let h): "device-readable descriptor after a writable one (head \(h))"
    case .unmapped(let s): s
    case .availIndexJump(let f, let t, let s): "avail index jumped from \(f) to \(t) in a ring of \(s)"
    case .ringNotReady(let s): "ring not ready: \(s)"
    }
  }
}

/// The dirty-page bitmap of SET_LOG_BASE: one bit per 4 KiB guest page, set atomically.
public final class DirtyLog: Sendable {
  public let memory: SharedMemory
  public static let pageSize: UInt64 = 0x1000

  public init(memory: SharedMemory) { self.memory = memory }

  /// Marks every page of `[guestAddress, guestAddress+length)`; pages beyond the log are ignored
  /// (the front-end sized the log for its memory).
  public func mark(guestAddress: UInt64, length: Int) {
    guard length > 0 else { return }
    let first = guestAddress / Self.pageSize
    let last = (guestAddress &+ UInt64(length) &- 1) / Self.pageSize
    guard last >= first else { return }
    for page in first...last {
      let byte = page / 8
      guard byte < UInt64(memory.size) else { return }
      try? memory.atomicOr8(UInt8(1) << UInt8(truncatingIfNeeded: page % 8), at: byte)
    }
  }
}

/// A validated descriptor chain: the device-readable buffers, then the device-writable ones.
public struct DescriptorChain: Sendable {
  /// The id the chain is completed with (split: head index; packed: buffer id).
  public let head: UInt16
  public let readable: [MemorySegment]
  public let writable: [MemorySegment]
  /// Number of descriptors it occupied in the ring (packed rings advance by this).
  public let ringDescriptors: Int

  public init(head: UInt16, readable: [MemorySegment], writable: [MemorySegment], ringDescriptors: Int = 1) {
    self.head = head
    self.readable = readable
    self.writable = writable
    self.ringDescriptors = ringDescriptors
  }

  public var readableLength: Int { readable.reduce(0) { $0 + $1.length } }
  public var writableLength: Int { writable.reduce(0) { $0 + $1.length } }

  /// A reader over the device-readable part.
  public func reader() -> ChainReader { ChainReader(segments: readable) }
  /// A writer over the device-writable part; `log` records every byte written when dirty logging is on.
  public func writer(log: DirtyLog? = nil) -> ChainWriter { ChainWriter(segments: writable, log: log) }
}

/// Gathers bytes from a chain's readable buffers.
public struct ChainReader: Sendable {
  let segments: [MemorySegment]
  var index = 0
  var offset = 0
  public private(set) var consumed = 0

  init(segments: [MemorySegment]) { self.segments = segments }

  public var remaining: Int { segments.reduce(0) { $0 + $1.length } - consumed }

  /// Reads up to `count` bytes (fewer if the chain ends).
  public mutating func read(_ count: Int) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(min(count, remaining))
    var want = count
    while want > 0 && index < segments.count {
      let s = segments[index]
      let n = min(want, s.length - offset)
      if n > 0, let bytes = try? s.mapping.read(at: s.offset + UInt64(offset), count: n) { out += bytes }
      offset += n
      want -= n
      consumed += n
      if offset == s.length {
        index += 1
        offset = 0
      }
    }
    return out
  }

  /// Reads exactly `count` bytes or nil when the chain is shorter.
  public mutating func readExactly(_ count: Int) -> [UInt8]? {
    guard remaining >= count else { return nil }
    return read(count)
  }

  /// Calls `body` with each piece of the next `count` bytes in place (no copy); for devices that
  /// hand guest memory to I/O directly.
  public mutating func withSegments(_ count: Int, _ body: (SharedMemory, UInt64, Int) throws -> Void) rethrows {
    var want = count
    while want > 0 && index < segments.count {
      let s = segments[index]
      let n = min(want, s.length - offset)
      try body(s.mapping, s.offset + UInt64(offset), n)
      offset += n
      want -= n
      consumed += n
      if offset == s.length {
        index += 1
        offset = 0
      }
    }
  }
}

/// Scatters bytes into a chain's writable buffers and counts what was written (the used length).
public struct ChainWriter: Sendable {
  let segments: [MemorySegment]
  let log: DirtyLog?
  var index = 0
  var offset = 0
  public private(set) var written = 0

  init(segments: [MemorySegment], log: DirtyLog?) {
    self.segments = segments
    self.log = log
  }

  public var remaining: Int { segments.reduce(0) { $0 + $1.length } - written }

  /// Writes as much of `bytes` as fits; returns the count written.
  @discardableResult
  public mutating func write(_ bytes: some Collection<UInt8>) -> Int {
    var data = bytes[...]
    var total = 0
    while !data.isEmpty && index < segments.count {
      let s = segments[index]
      let n = min(data.count, s.length - offset)
      let piece = data.prefix(n)
      if (try? s.mapping.write(piece, at: s.offset + UInt64(offset))) != nil {
        log?.mark(guestAddress: s.guestAddress + UInt64(offset), length: n)
      }
      data = data.dropFirst(n)
      offset += n
      total += n
      written += n
      if offset == s.length {
        index += 1
        offset = 0
      }
    }
    return total
  }

  /// Calls `body` with each piece of the next `count` writable bytes in place.
  public mutating func withSegments(_ count: Int, _ body: (SharedMemory, UInt64, Int) throws -> Void) rethrows {
    var want = count
    while want > 0 && index < segments.count {
      let s = segments[index]
      let n = min(want, s.length - offset)
      try body(s.mapping, s.offset + UInt64(offset), n)
      log?.mark(guestAddress: s.guestAddress + UInt64(offset), length: n)
      offset += n
      want -= n
      written += n
      if offset == s.length {
        index += 1
        offset = 0
      }
    }
  }

  /// Skips `count` writable bytes (they count as written).
  public mutating func skip(_ count: Int) { withSegments(count) { _, _, _ in } }
}
