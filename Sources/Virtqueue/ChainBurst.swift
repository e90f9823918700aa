import VhostSystem

/// One contiguous piece of a burst chain's buffers: where it lies in one of the burst's mappings.
/// Plain values (no object references), so a burst of chains costs no reference counting.
@frozen public struct BurstSegment: Sendable {
  /// Index into `ChainBurst.mappings`.
  public let mapping: Int32
  public let writable: Bool
  public let offset: UInt64
  public let length: Int
  /// Guest-physical address of the segment's start (dirty logging).
  public let guestAddress: UInt64
}

/// A batch of validated descriptor chains taken from a ring in one go, in storage that is reused
/// from burst to burst (no allocation per chain). The device reads or fills each chain, records
/// what it wrote with `setWritten`, and hands the burst back with `QueueHandle.completeBurst`,
/// which returns every chain to the driver with one used-index update.
///
/// A chain that failed validation stays in the burst as *failed*: it has no segments and is
/// returned to the driver with length 0.
public struct ChainBurst: Sendable {
  /// One chain of the burst.
  @usableFromInline struct Entry: Sendable {
    @usableFromInline var head: UInt16
    @usableFromInline var failed: Bool
    @usableFromInline var readable: Int
    @usableFromInline var writable: Int
    @usableFromInline var written: UInt32
    /// Descriptors the chain occupied in the ring (packed rings advance by this).
    @usableFromInline var ringDescriptors: Int
    /// The chain's segments are `segments[segmentStart..<segmentEnd]`.
    @usableFromInline var segmentStart: Int
    @usableFromInline var segmentEnd: Int
  }

  @usableFromInline var entries: [Entry] = []
  @usableFromInline var segments: [BurstSegment] = []
  /// Scratch for the ring's burst path (the heads read from the avail ring).
  var heads: [UInt16] = []
  /// The mappings segments point into.
  public internal(set) var mappings: [SharedMemory] = [] {
    didSet { mappingRefs = mappings.map { Unmanaged.passUnretained($0) } }
  }
  /// `mappings` without reference counting (kept alive by `mappings`): a retain per packet is an
  /// atomic instruction that waits for every pending store into guest memory.
  @usableFromInline var mappingRefs: [Unmanaged<SharedMemory>] = []
  /// When the ring has no burst path of its own: the chains as `pop()` returned them.
  var chains: [DescriptorChain] = []
  /// Errors met while taking the burst (the failed chains, and chains that could not be returned).
  public internal(set) var errors: [ChainError] = []
  /// Available entries the burst consumed: its chains, failed ones included, and heads that could
  /// not be returned (they are only in `errors`).
  public internal(set) var taken = 0

  // The chain being walked (ChainSink).
  var memory = GuestMemory.empty
  var head: UInt16 = 0
  var openReadable = 0
  var openWritable = 0
  var openStart = 0

  public init() {}

  /// Chains in the burst.
  @inlinable public var count: Int { entries.count }

  /// The guest memory `mappings` was taken from (nil: built chain by chain).
  var mappingsSource: GuestMemory?

  /// Empties the burst, keeping its storage; segments will index `memory.mappings` (or, with nil,
  /// mappings collected chain by chain).
  mutating func reset(for memory: GuestMemory?) {
    removeAll()
    if memory !== mappingsSource || memory == nil {
      mappings = memory?.mappings ?? []
      mappingsSource = memory
    }
  }

  /// Starts walking chain `head`.
  mutating func beginChain(_ head: UInt16) {
    self.head = head
    openReadable = 0
    openWritable = 0
    openStart = segments.count
  }

  /// Closes the chain whose segments were appended since `beginChain`.
  mutating func finishChain(
    head: UInt16, readable r: Int, writable w: Int, failed f: Bool, ringDescriptors d: Int = 1
  ) {
    entries.append(
      Entry(
        head: head, failed: f, readable: r, writable: w, written: 0, ringDescriptors: d, segmentStart: openStart,
        segmentEnd: segments.count))
  }

  /// Drops segments appended for a chain that then failed.
  mutating func discardOpenSegments() {
    if segments.count > openStart { segments.removeSubrange(openStart...) }
  }

  /// Empties the burst, keeping its storage.
  public mutating func removeAll() {
    taken = 0
    entries.removeAll(keepingCapacity: true)
    // A burst of long chains (a guest can make one chain of 32 768 descriptors) does not keep
    // its storage: only ordinary bursts reuse theirs.
    if segments.count > 4096 { segments = [] } else { segments.removeAll(keepingCapacity: true) }
    if !chains.isEmpty { chains.removeAll(keepingCapacity: true) }
    if !errors.isEmpty { errors.removeAll(keepingCapacity: true) }
  }

  /// Appends a chain `pop()` returned (rings without a burst path, resubmitted requests).
  public mutating func append(_ chain: DescriptorChain) {
    openStart = segments.count
    var r = 0
    var w = 0
    for (list, isWritable) in [(chain.readable, false), (chain.writable, true)] {
      for s in list {
        let index: Int
        if let i = mappings.firstIndex(where: { $0 === s.mapping }) {
          index = i
        } else {
          mappings.append(s.mapping)
          index = mappings.count - 1
        }
        segments.append(
          BurstSegment(
            // bounded: an index into at most Limits.maxMemSlots mappings
            mapping: Int32(index), writable: isWritable, offset: s.offset, length: s.length,
            guestAddress: s.guestAddress))
        if isWritable { w += s.length } else { r += s.length }
      }
    }
    chains.append(chain)
    finishChain(head: chain.head, readable: r, writable: w, failed: false, ringDescriptors: chain.ringDescriptors)
  }

  // MARK: Reading and filling chains

  /// The id chain `i` is completed with.
  @inlinable public func head(_ i: Int) -> UInt16 { entries[i].head }
  /// Whether chain `i` failed validation (it is returned with length 0; skip it).
  @inlinable public func isFailed(_ i: Int) -> Bool { entries[i].failed }
  /// Device-readable bytes of chain `i`.
  @inlinable public func readableLength(_ i: Int) -> Int { entries[i].readable }
  /// Device-writable bytes of chain `i`.
  @inlinable public func writableLength(_ i: Int) -> Int { entries[i].writable }
  /// Sets the used length chain `i` is completed with.
  @inlinable public mutating func setWritten(_ i: Int, _ n: Int) { entries[i].written = UInt32(clamping: n) }
  /// The used length chain `i` is completed with.
  @inlinable public func written(_ i: Int) -> UInt32 { entries[i].written }

  /// Copies chain `i`'s first `count` readable bytes into `buffer` at `offset`; returns the bytes
  /// copied (bytes the guest made unreadable meanwhile read as zeros).
  @inlinable
  public func gather(_ i: Int, count: Int, into buffer: PacketBuffer, at offset: Int) -> Int {
    let e = entries[i]
    var left = min(count, e.readable, max(0, buffer.capacity - offset))
    var at = offset
    for k in e.segmentStart..<e.segmentEnd where left > 0 {
      let s = segments[k]
      guard !s.writable else { break }
      let n = min(left, s.length)
      let ok = mappingRefs[Int(s.mapping)]._withUnsafeGuaranteedRef {
        (try? buffer.read(from: $0, at: s.offset, count: n, to: at)) != nil
      }
      if !ok { buffer.fill(0, at..<(at + n)) }
      at += n
      left -= n
    }
    return at - offset
  }

  /// Copies `range` of `buffer` into chain `i`'s writable buffers (as much as fits), marking the
  /// pages in `log` when dirty logging is on; returns the bytes written.
  @inlinable
  public func scatter(_ i: Int, from buffer: PacketBuffer, _ range: Range<Int>, log: DirtyLog? = nil) -> Int {
    var at = range.lowerBound
    let e = entries[i]
    for k in e.segmentStart..<e.segmentEnd where at < range.upperBound {
      let s = segments[k]
      guard s.writable else { continue }
      let n = min(range.upperBound - at, s.length)
      let ok = mappingRefs[Int(s.mapping)]._withUnsafeGuaranteedRef {
        (try? buffer.write(at..<(at + n), to: $0, at: s.offset)) != nil
      }
      if !ok { break }
      log?.mark(guestAddress: s.guestAddress, length: n)
      at += n
    }
    return at - range.lowerBound
  }
}

extension ChainBurst: ChainSink {
  mutating func add(address: UInt64, length: UInt32, writable isWritable: Bool) throws(ChainError) {
    if !isWritable && openWritable > 0 { throw .readableAfterWritable(head: head) }
    do {
      try memory.appendSegments(guestAddress: address, length: Int(length), writable: isWritable, to: &segments)
    } catch {
      throw .unmapped("descriptor of chain \(head): \(error)")
    }
    if isWritable { openWritable += Int(length) } else { openReadable += Int(length) }
  }
}
