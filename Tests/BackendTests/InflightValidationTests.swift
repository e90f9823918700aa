import Testing
import VhostProtocol
import VhostSystem
import Virtqueue

/// Inflight areas and packed-ring positions are the front-end's values: these drive the trackers
/// and the packed ring directly with contents no well-behaved back-end would leave.
extension BackendTests {
  /// One queue's area for `ringSize` descriptors, inside a region sized for `areaSize`.
  func inflightArea(areaSize: Int = 256, ringSize: UInt16 = 256) throws -> (SharedMemory, InflightRegion) {
    let memory = try SharedMemory(
      anonymous: "betests-inflight", size: InflightRegion.queueRegionSize(queueSize: areaSize))
    return (memory, try InflightRegion(memory: memory, queueCount: 1, queueSize: areaSize))
  }

  @Test("split inflight areas that do not describe the ring are reset, not replayed; a counter at UInt64.max wraps")
  func splitInflightValidation() throws {
    let (memory, region) = try inflightArea()
    #expect(region.queue(0, ringSize: 512) == nil, "a ring larger than the area has no tracker")
    #expect(region.queue(1, ringSize: 256) == nil)
    let tracker = try #require(region.queue(0, ringSize: 256))
    func header(version: UInt16 = 1, descNum: UInt16 = 256, lastBatch: UInt16 = 0, used: UInt16 = 0) throws {
      try memory.store(version, at: 8)
      try memory.store(descNum, at: 10)
      try memory.store(lastBatch, at: 12)
      try memory.store(used, at: 14)
    }
    func mark(_ head: UInt64, inflight: UInt8 = 1, counter: UInt64) throws {
      try memory.store(inflight, at: 16 + head * 16)
      try memory.store(counter, at: 16 + head * 16 + 8)
    }
    func expectReset(_ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
      switch tracker.recover(usedIndex: 0, features: 0) {
      case .reset: break
      case .pending(let p): Issue.record("\(what): replayed \(p)", sourceLocation: sourceLocation)
      }
      // Reset means a clean area for this ring.
      #expect((try? memory.load(UInt16.self, at: 10)) == 256, sourceLocation: sourceLocation)
      #expect((try? memory.load(UInt8.self, at: 16 + 3 * 16)) == 0, sourceLocation: sourceLocation)
    }
    try header(descNum: 1024)
    try mark(3, counter: 1)
    expectReset("desc_num 1024 for a ring of 256")
    try header()
    try mark(3, inflight: 7, counter: 1)
    expectReset("an inflight byte of 7")
    try header(lastBatch: 300, used: 5)
    try mark(3, counter: 1)
    expectReset("last_batch_head beyond the ring")
    // A valid area, oldest first, with the counter at its maximum: the next fetch wraps.
    try header()
    try mark(9, counter: .max)
    try mark(4, counter: 7)
    guard case .pending(let heads) = tracker.recover(usedIndex: 0, features: 0) else {
      Issue.record("a valid area was reset")
      return
    }
    #expect(heads == [4, 9])
    tracker.fetched(head: 20)
    #expect(try memory.load(UInt64.self, at: 16 + 20 * 16 + 8) == 0, "the counter wraps by intent")
    tracker.fetched(head: 60_000)  // beyond the ring: ignored
  }

  @Test("packed inflight areas: chain lengths, links, ids and the total are checked against the ring")
  func packedInflightValidation() throws {
    let (memory, region) = try inflightArea()
    let tracker = try #require(region.packedQueue(0, ringSize: 256))
    func entry(_ slot: UInt64) -> UInt64 { 32 + slot * 32 }
    func header(descNum: UInt16 = 256, used: UInt16 = 0) throws {
      try memory.store(UInt16(1), at: 8)
      try memory.store(descNum, at: 10)
      try memory.store(used, at: 16)
    }
    func chain(at slot: UInt64, num: UInt16, id: UInt16 = 1, next: UInt16? = nil) throws {
      try memory.store(UInt8(1), at: entry(slot))
      try memory.store(num, at: entry(slot) + 6)
      for k in 0..<UInt64(num) {
        let s = (slot + k) % 256
        try memory.store(next ?? UInt16((s + 1) % 256), at: entry(s) + 2)
        try memory.store(id, at: entry(s) + 16)
      }
    }
    func clear() throws { try memory.fill(0, at: 0, count: memory.size) }
    func expectReset(_ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
      if case .pending(let p) = tracker.recover(features: 0, usedIndex: 0, usedWrap: true) {
        Issue.record("\(what): replayed \(p.count) chains", sourceLocation: sourceLocation)
      }
    }
    try header(descNum: 64)
    expectReset("desc_num 64 for a ring of 256")
    try clear()
    try header(used: 256)
    expectReset("used_idx at the ring's size")
    // Two chains that together take more slots than the ring has (the audit's case: one long
    // resubmitted chain moved the used index past the ring).
    try clear()
    try header()
    try chain(at: 0, num: 200)
    try chain(at: 200, num: 100)
    expectReset("300 slots in a ring of 256")
    try clear()
    try header()
    try chain(at: 0, num: 2, next: 999)
    expectReset("a link beyond the ring")
    try clear()
    try header()
    try chain(at: 0, num: 1, id: 256)
    expectReset("a buffer id beyond the ring")
    try clear()
    try header()
    try chain(at: 10, num: 3, id: 5)
    guard case .pending(let p) = tracker.recover(features: 0, usedIndex: 0, usedWrap: true) else {
      Issue.record("a valid packed area was reset")
      return
    }
    #expect(p.count == 1 && p.first?.head == 10 && p.first?.descriptors.count == 3)
  }

  @Test("packed ring: a chain that never ends takes exactly the ring; resubmission beyond the ring is refused")
  func packedRingBounds() throws {
    let size: UInt16 = 8
    let shared = try SharedMemory(anonymous: "betests-packed-bounds", size: 1 << 16)
    let region = MemoryRegion(guestPhysAddr: 0, memorySize: 1 << 16, userAddr: shared.address, mmapOffset: 0)
    let memory = try GuestMemory().adding(region, fd: shared.fd, limit: 8)
    let descAt: UInt64 = 0
    let config = RingConfiguration(
      size: size, desc: shared.address + descAt, avail: shared.address + 0x1000, used: shared.address + 0x2000,
      eventIndex: false, packed: true, base: VringBase(packedAvail: 0, availWrap: true, used: 0, usedWrap: true))
    let ring = try PackedDeviceRing(config, memory: memory)
    // Every slot available (AVAIL set, USED clear for wrap 1) and chained to the next: no end.
    for i in 0..<UInt64(size) {
      try shared.store(UInt64(0x8000), at: descAt + i * 16)
      try shared.store(UInt32(16), at: descAt + i * 16 + 8)
      try shared.store(UInt16(i), at: descAt + i * 16 + 12)
      try shared.store(UInt16(1 << 7 | 1), at: descAt + i * 16 + 14)
    }
    #expect(throws: ChainError.self) { _ = try ring.pop() }
    // The chain was given back as one used element at slot 0, and both positions moved on by
    // exactly the ring's size: one full lap, wrap counters toggled, indices back at 0.
    let base = ring.base
    #expect(base.availIndex == 0 && base.availWrap == false, "avail position \(base)")
    #expect(base.usedIndex == 0 && base.usedWrap == false, "used position \(base)")
    #expect(throws: ChainError.self) { try ring.resume(usedIndex: 0, usedWrap: true, afterResubmitting: 9) }
    try ring.resume(usedIndex: 3, usedWrap: true, afterResubmitting: 8)
    #expect(ring.base.availIndex == 3 && ring.base.availWrap == false)
  }
}
