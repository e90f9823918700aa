import Foundation
import Testing
import VhostBackend
import VhostFrontend
import VhostProtocol
import VhostSystem
import Virtqueue

/// Guest memory made of many separate memfds at contiguous guest-physical addresses.
final class ManyRegions {
  static let regionSize = 64 << 10
  static let guestBase: UInt64 = 0x1_0000_0000
  let regions: [DriverMemory]

  init(count: Int) throws {
    regions = try (0..<count).map { i in
      try DriverMemory(
        size: Self.regionSize, guestBase: Self.guestBase + UInt64(i * Self.regionSize), name: "betests-region-\(i)")
    }
  }

  func guestRegions(excluding excluded: Set<Int> = []) -> [GuestRegion] {
    regions.enumerated().filter { !excluded.contains($0.offset) }.map {
      GuestRegion($0.element.memory, guestPhysAddr: $0.element.guestBase)
    }
  }

  /// The guest-physical address of `offset` in region `index`.
  func gpa(_ index: Int, _ offset: Int) -> UInt64 { regions[index].gpa(UInt64(offset)) }

  /// Visits the pieces of `[gpa, gpa+count)` region by region.
  private func pieces(_ gpa: UInt64, _ count: Int, _ body: (SharedMemory, UInt64, Range<Int>) throws -> Void) throws {
    var done = 0
    while done < count {
      let at = gpa + UInt64(done) - Self.guestBase
      let index = Int(at / UInt64(Self.regionSize))
      let offset = at % UInt64(Self.regionSize)
      let n = min(count - done, Self.regionSize - Int(offset))
      try body(regions[index].memory, offset, done..<done + n)
      done += n
    }
  }

  func write(_ bytes: [UInt8], at gpa: UInt64) throws {
    try pieces(gpa, bytes.count) { mem, offset, range in try mem.write(bytes[range], at: offset) }
  }

  func read(_ gpa: UInt64, count: Int) throws -> [UInt8] {
    var out: [UInt8] = []
    try pieces(gpa, count) { mem, offset, range in out += try mem.read(at: offset, count: range.count) }
    return out
  }
}

/// One ring set up by hand through the front-end API (not DeviceDriver, whose memory is one region).
struct HandRing {
  let index: UInt32
  let ring: SplitDriverQueue
  let kick: EventFD
  let call: EventFD

  init(index: UInt32, in memory: DriverMemory, frontend: VhostUserFrontend, size: UInt16 = 256) throws {
    self.index = index
    ring = try SplitDriverQueue(size: size, in: memory)
    kick = try EventFD()
    call = try EventFD()
    try frontend.setVringNum(index, UInt32(size))
    try frontend.setVringBase(index, 0)
    try frontend.setVringAddr(
      VringAddress(index: index, desc: ring.descUserAddr, used: ring.usedUserAddr, avail: ring.availUserAddr))
    try frontend.setVringKick(index, kick.fd)
    try frontend.setVringCall(index, call.fd)
    try frontend.setVringEnable(index, true)
  }

  /// Adds one chain, kicks, and returns its completion.
  func roundTrip(_ buffers: [DriverBuffer], timeout: Double = 5) throws -> UsedElement {
    let head = try ring.add(buffers)
    if ring.needsKick() { try kick.signal() }
    let used = try collectUsed(ring, call: call, count: 1, timeout: timeout)
    guard used.count == 1, used[0].head == head else { throw TestFailure("expected head \(head) back, got \(used)") }
    return used[0]
  }
}

extension BackendTests {
  /// Echoes `input` placed at `readable` into `writable` (both guest-physical, possibly spanning
  /// regions, possibly several pieces) and checks the result.
  func echo(
    _ ring: HandRing, _ space: ManyRegions, input: [UInt8], readable: [(UInt64, Int)], writable: (UInt64, Int),
    timeout: Double = 5,
    sourceLocation: SourceLocation = #_sourceLocation
  ) throws {
    var at = 0
    for (gpa, n) in readable {
      try space.write(Array(input[at..<at + n]), at: gpa)
      at += n
    }
    try space.write(Array(repeating: 0, count: writable.1), at: writable.0)
    let buffers =
      readable.map { DriverBuffer(guestAddress: $0.0, length: UInt32($0.1), deviceWritable: false) }
      + [DriverBuffer(guestAddress: writable.0, length: UInt32(writable.1), deviceWritable: true)]
    let used = try ring.roundTrip(buffers, timeout: timeout)
    #expect(used.length == UInt32(input.count), sourceLocation: sourceLocation)
    #expect(try space.read(writable.0, count: input.count) == xor5a(input), sourceLocation: sourceLocation)
  }

  /// Negotiates, takes ownership, acknowledges VERSION_1 and installs `space` with ADD_MEM_REG.
  func connectWithRegions(_ backend: LoopbackBackend, _ space: ManyRegions, via relay: MessageRelay? = nil) throws -> (
    VhostUserConnection, VhostUserFrontend
  ) {
    let connection =
      if let relay {
        try VhostUserConnection.connect(path: relay.path, configuration: .quiet(), retryMilliseconds: 2000)
      } else {
        try backend.connect()
      }
    let frontend = connection.device()
    let state = try frontend.negotiate()
    #expect(state.protocolFeatures.contains(.configureMemSlots))
    #expect(state.maxMemSlots == 509)
    try frontend.setOwner()
    try frontend.setFeatures(.version1)
    try frontend.setMemTable(space.guestRegions(), preferSlots: true)
    return (connection, frontend)
  }

  @Test(
    "100 memory regions by ADD_MEM_REG: rings and buffers in different regions, buffers spanning regions, one REM_MEM_REG"
  )
  func hundredRegions() throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 2))
    defer { backend.stop() }
    let space = try ManyRegions(count: 100)
    let relay = try MessageRelay(to: backend.path)
    defer { relay.stop() }
    let (connection, frontend) = try connectWithRegions(backend, space, via: relay)
    defer { connection.close() }
    // 100 separate descriptors cannot be merged: 100 ADD_MEM_REG, no SET_MEM_TABLE.
    #expect(relay.count(.addMemReg) == 100)
    #expect(relay.count(.setMemTable) == 0)

    // Ring 0 lives in region 10, ring 1 in region 90.
    let q0 = try HandRing(index: 0, in: space.regions[10], frontend: frontend)
    let q1 = try HandRing(index: 1, in: space.regions[90], frontend: frontend)
    let last = ManyRegions.regionSize

    // Buffers in one region each, in regions other than the rings'.
    for i in 0..<20 {
      let input = pattern(seed: 2, i, count: 100 + i)
      try echo(
        q0, space, input: input, readable: [(space.gpa(20 + i, 0x100), input.count)],
        writable: (space.gpa(30 + i, 0x200), 512))
    }
    // A readable buffer spanning regions 70|71 and a writable one spanning 71|72.
    let spanning = pattern(seed: 3, 0, count: 200)
    try echo(
      q0, space, input: spanning, readable: [(space.gpa(70, last - 100), 200)],
      writable: (space.gpa(71, last - 150), 300))
    #expect(try space.regions[71].memory.read(at: UInt64(last - 150), count: 150) == xor5a(Array(spanning[0..<150])))
    #expect(try space.regions[72].memory.read(at: 0, count: 50) == xor5a(Array(spanning[150..<200])))
    // One chain gathering 40 descriptors from 40 regions, written into a buffer spanning 95|96|97.
    let scattered = pattern(seed: 4, 0, count: 40 * 64)
    try echo(
      q0, space, input: scattered, readable: (0..<40).map { (space.gpa(40 + $0, 0xF000), 64) },
      writable: (space.gpa(95, last - 100), last + 200))
    // One chain reading 16 bytes from every one of the 100 regions: all of them were installed.
    let everywhere = pattern(seed: 8, 0, count: 100 * 16)
    try echo(
      q0, space, input: everywhere, readable: (0..<100).map { (space.gpa($0, 0xFF00), 16) },
      writable: (space.gpa(99, 0x8000), 100 * 16))
    // Ring 1, buffers in regions 50 and 60.
    for i in 0..<10 {
      let input = pattern(seed: 5, i, count: 64)
      try echo(
        q1, space, input: input, readable: [(space.gpa(50, 64 * i), 64)], writable: (space.gpa(60, 128 * i), 128))
    }

    // Remove region 50 (buffers only): one REM_MEM_REG.
    try frontend.setMemTable(space.guestRegions(excluding: [50]), preferSlots: true)
    #expect(relay.count(.remMemReg) == 1)
    #expect(relay.count(.addMemReg) == 100)
    let session = try #require(backend.server.currentSession)
    let errorsBefore = session.queues[1].chainErrors
    // Both rings still serve buffers in the remaining regions.
    for i in 0..<10 {
      let input = pattern(seed: 6, i, count: 80)
      try echo(q0, space, input: input, readable: [(space.gpa(51, 80 * i), 80)], writable: (space.gpa(52, 80 * i), 80))
      try echo(q1, space, input: input, readable: [(space.gpa(61, 80 * i), 80)], writable: (space.gpa(62, 80 * i), 80))
    }
    try echo(
      q1, space, input: spanning, readable: [(space.gpa(51, last - 100), 200)], writable: (space.gpa(53, 0), 200))
    // A buffer in the removed region is refused: returned with length 0, counted as an error.
    let refused = try q1.roundTrip([
      DriverBuffer(guestAddress: space.gpa(50, 0), length: 64, deviceWritable: false),
      DriverBuffer(guestAddress: space.gpa(60, 0), length: 64, deviceWritable: true),
    ])
    #expect(refused.length == 0)
    #expect(waitChainErrors(session.queues[1], errorsBefore + 1, isUnmapped))
    // And a buffer spanning into the hole (49|50) too.
    let spanningHole = try q1.roundTrip([
      DriverBuffer(guestAddress: space.gpa(49, last - 32), length: 64, deviceWritable: false),
      DriverBuffer(guestAddress: space.gpa(60, 0), length: 64, deviceWritable: true),
    ])
    #expect(spanningHole.length == 0)
    #expect(waitChainErrors(session.queues[1], errorsBefore + 2, isUnmapped))
    // Ring 1 carries on afterwards.
    try echo(q1, space, input: spanning, readable: [(space.gpa(61, 0), 200)], writable: (space.gpa(62, 0), 200))
    // Ring 0: 20 + 1 + 1 + 1 + 10 chains; ring 1: 10 + 10 + 1 + 1 (the two refused ones do not reach the device).
    #expect(waitUntil { backend.device.chains(0) == 33 && backend.device.chains(1) == 22 })
  }

  @Test("REM_MEM_REG of the region holding a running ring leaves the back-end consistent")
  func removeRingRegion() throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 2))
    defer { backend.stop() }
    let space = try ManyRegions(count: 12)
    let (connection, frontend) = try connectWithRegions(backend, space)
    defer { connection.close() }
    // Ring 0 lives in region 1, ring 1 in region 2; region 1 also has room for buffers.
    let q0 = try HandRing(index: 0, in: space.regions[1], frontend: frontend)
    let q1 = try HandRing(index: 1, in: space.regions[2], frontend: frontend)
    let input = pattern(seed: 7, 0, count: 48)
    let inRegion1: [(UInt64, Int)] = [(space.gpa(1, 0xE000), 48)]
    try echo(q0, space, input: input, readable: [(space.gpa(5, 0), 48)], writable: (space.gpa(6, 0), 64))
    try echo(q1, space, input: input, readable: inRegion1, writable: (space.gpa(6, 0), 64))

    // Remove region 1 (ring 0's). Refusing is fine — then nothing may have changed; accepting is
    // fine — then region 1 is gone for every ring.
    var refused = false
    do {
      try frontend.setMemTable(space.guestRegions(excluding: [1]), preferSlots: true)
    } catch {
      // (A `catch FrontendError.refused` pattern here crashes the 6.3.1 compiler in SILGen.)
      guard case .refused = error else { throw error }
      refused = true
    }
    if refused {
      // Nothing changed: ring 0 still serves.
      do {
        try echo(
          q0, space, input: input, readable: [(space.gpa(5, 0), 48)], writable: (space.gpa(6, 0), 64), timeout: 1)
      } catch {
        Issue.record("REM_MEM_REG was refused, yet ring 0 no longer serves: \(error)")
      }
    }
    // Ring 1 sees region 1 exactly when the table has it, and keeps seeing it the same way after
    // a restart (which builds the ring from the session's current table).
    let before = try q1.roundTrip(
      inRegion1.map { DriverBuffer(guestAddress: $0.0, length: 48, deviceWritable: false) }
        + [DriverBuffer(guestAddress: space.gpa(6, 0), length: 64, deviceWritable: true)])
    let base = try frontend.getVringBase(1)
    try frontend.setVringBase(1, base)
    try frontend.setVringKick(1, q1.kick.fd)
    let after = try q1.roundTrip(
      inRegion1.map { DriverBuffer(guestAddress: $0.0, length: 48, deviceWritable: false) }
        + [DriverBuffer(guestAddress: space.gpa(6, 0), length: 64, deviceWritable: true)])
    #expect(before.length == after.length, "ring 1: \(before.length) bytes before its restart, \(after.length) after")
    #expect(before.length == (refused ? 48 : 0), "refused: \(refused); ring 1 wrote \(before.length) from region 1")
    // Whatever happened, ring 1 still serves the regions that remain.
    try echo(q1, space, input: input, readable: [(space.gpa(7, 0), 48)], writable: (space.gpa(8, 0), 64))
  }
}
