import Foundation
import Testing
import VhostBackend
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTransport
import Virtqueue

/// Bodies a hostile front-end sends.
enum Forged {
  /// A body of the wrong size for `code` (short where the layout has a size; 4 bytes for bodiless requests).
  static func shortBody(_ code: FrontendRequest) -> [UInt8] {
    switch code.requestLayout {
    case .empty: [0xa5, 0xa5, 0xa5, 0xa5]
    case .memoryTable: [1, 0, 0, 0]
    case .config: [0, 0, 0, 0, 4, 0, 0, 0]
    case .opaque, .u64OrEmpty: [0xa5, 0xa5, 0xa5]
    default: Array(repeating: 0xa5, count: (code.requestLayout.fixedSize ?? 1) - 1)
    }
  }

  /// Garbage of the right size (with the descriptors the request needs so the handler sees it), or
  /// nil when the request has no body.
  static func garbage(_ code: FrontendRequest, _ rng: inout SplitMix64) throws -> (body: [UInt8], fds: [OwnedFD])? {
    func u64(_ v: UInt64) -> [UInt8] { Payload.u64(v).encoded() }
    func state(_ i: UInt32, _ n: UInt32) -> [UInt8] { Payload.vringState(VringState(index: i, num: n)).encoded() }
    func memfd() throws -> OwnedFD { try SharedMemory(anonymous: "betests-garbage", size: 4096).fd }
    func region() -> MemoryRegion {
      MemoryRegion(
        guestPhysAddr: rng.next(), memorySize: 0xffff_ffff_ffff_0000 | rng.next(), userAddr: rng.next(),
        mmapOffset: rng.next())
    }
    switch code {
    case .setFeatures, .setProtocolFeatures: return (u64(.max), [])
    case .setMemTable:
      return (Payload.memoryTable(MemoryTable(regions: [region()])).encoded(), [try memfd()])
    case .setLogBase:
      return (Payload.log(LogDescription(mmapSize: .max, mmapOffset: rng.next())).encoded(), [try memfd()])
    case .setVringNum, .setVringBase, .getVringBase, .setVringEndian, .vringKick, .getVringBaseSkipDrain:
      return (state(0xdead_0000 | UInt32(truncatingIfNeeded: rng.next() & 0xffff), 0xbeef), [])
    case .setVringEnable: return (state(0, 0xbeef), [])
    case .setVringAddr:
      return (
        Payload.vringAddress(
          VringAddress(
            index: 0xdead, flags: .max, desc: rng.next(), used: rng.next(), avail: rng.next(), log: rng.next())
        ).encoded(), []
      )
    case .setVringKick, .setVringCall, .setVringErr:
      // Ring 0xff (no such ring), fd bit clear: one eventfd rides along.
      return (u64(0xdead_beef_0000_00ff), [try EventFD().fd])
    case .sendRARP, .netSetMTU, .closeCryptoSession: return (u64(rng.next()), [])
    case .setStatus: return (u64(0xdead_beef_0000_0003), [])
    case .iotlbMsg: return (rng.bytes(IOTLBMessage.size), [])
    case .getConfig: return (Payload.config(ConfigSpace(offset: 0xffff_fff0, bytes: rng.bytes(4))).encoded(), [])
    case .setConfig:
      return (Payload.config(ConfigSpace(offset: 0xffff_fff0, flags: 0xdead, bytes: rng.bytes(4))).encoded(), [])
    case .createCryptoSession: return (rng.bytes(16), [])
    case .getInflightFD:
      return (
        Payload.inflight(
          InflightDescription(mmapSize: rng.next(), mmapOffset: rng.next(), numQueues: .max, queueSize: .max)
        ).encoded(), []
      )
    case .setInflightFD:
      return (
        Payload.inflight(InflightDescription(mmapSize: .max, mmapOffset: rng.next(), numQueues: .max, queueSize: .max))
          .encoded(),
        [try memfd()]
      )
    case .addMemReg: return (Payload.singleRegion(SingleMemoryRegion(region())).encoded(), [try memfd()])
    case .remMemReg: return (Payload.singleRegion(SingleMemoryRegion(region())).encoded(), [])
    case .getSharedObject: return (rng.bytes(SharedObject.size), [])
    case .setDeviceStateFD:
      let (_, w) = try makePipe()
      return (
        Payload.deviceStateTransfer(DeviceStateTransfer(direction: .load, phase: 9)).encoded().map { $0 | 0x40 }, [w]
      )
    default:
      return nil  // bodiless requests: no garbage of a valid size exists
    }
  }
}

extension BackendTests {
  /// The back-end refused: a non-zero REPLY_ACK, a failure value in an explicit reply, or a closed
  /// connection. Returns whether the connection is still open.
  @discardableResult
  func expectRefusal(
    _ outcome: RawClient.Outcome, to code: FrontendRequest, _ what: String, zeroAllowed: Bool = false,
    sourceLocation: SourceLocation = #_sourceLocation
  ) -> Bool {
    switch outcome {
    case .timeout:
      Issue.record("\(code.name) \(what): no answer and the connection stays open", sourceLocation: sourceLocation)
      return false
    case .closed:
      return false
    case .reply(let m):
      #expect(m.header.flags == [.reply, .version1], "\(code.name) \(what)", sourceLocation: sourceLocation)
      #expect(m.header.request == code.rawValue, "\(code.name) \(what)", sourceLocation: sourceLocation)
      #expect(m.fds.isEmpty, "\(code.name) \(what): descriptors in a failure reply", sourceLocation: sourceLocation)
      switch code.replyLayout {
      case .config?:
        // GET_CONFIG's failure answer: an empty config space.
        #expect(
          m.body.count == ConfigSpace.headerSize && m.body[4..<8] == [0, 0, 0, 0], "\(code.name) \(what): \(m.body)",
          sourceLocation: sourceLocation)
      case nil, .u64?, .u64OrEmpty?:
        let v = outcome.u64
        #expect(v != nil && (v != 0 || zeroAllowed), "\(code.name) \(what): \(outcome)", sourceLocation: sourceLocation)
      default:
        Issue.record("\(code.name) \(what): answered as if it succeeded: \(outcome)", sourceLocation: sourceLocation)
      }
      return true
    }
  }

  /// The connection is still in step: GET_FEATURES gets the real answer.
  func expectInStep(
    _ client: RawClient, features: UInt64, _ what: String, sourceLocation: SourceLocation = #_sourceLocation
  ) throws {
    let answer = try client.exchange(.getFeatures, flags: 1)
    #expect(answer.u64 == features, "after \(what): \(answer)", sourceLocation: sourceLocation)
  }

  /// A normal front-end session: negotiate, one ring, a few echoed chains.
  func expectHealthy(_ backend: LoopbackBackend, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let connection = try backend.connect()
    defer { connection.close() }
    let driver = try DeviceDriver(frontend: connection.device(), features: .version1, queueCount: 1, queueSize: 256)
    try echoChains(driver, driver.queues[0], count: 8, seed: 99, sourceLocation: sourceLocation)
  }

  @Test(
    "hostile front-end: every request 1…45 with a wrong-size body and with garbage; the server survives, leaks nothing")
  func hostileMessages() throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 1), configuration: .quiet(timeoutMilliseconds: 2000))
    defer { backend.stop() }
    // Warm up once, so lazily created process state is not counted as a leak.
    try expectHealthy(backend)
    #expect(backend.waitIdle())
    let fdsBefore = settledDescriptorCount()
    let listingBefore = openDescriptors()
    var features: UInt64 = 0
    var rng = SplitMix64(seed: 0x5eed)
    var closedCount = 0
    var garbageCases = 0

    for code in FrontendRequest.allKnown {
      // (a) A body of the wrong size, NEED_REPLY set.
      do {
        let client = try backend.raw()
        features = try client.negotiate()
        try client.send(code.rawValue, body: Forged.shortBody(code))
        if expectRefusal(client.receive(), to: code, "with a \(Forged.shortBody(code).count)-byte body") {
          try expectInStep(client, features: features, "\(code.name) with a wrong-size body")
        } else {
          closedCount += 1
        }
      }
      // (b) Garbage of the right size.
      if let (body, fds) = try Forged.garbage(code, &rng) {
        garbageCases += 1
        let client = try backend.raw()
        try client.negotiate()
        try client.send(code.rawValue, body: body, fds: fds)
        // SET_STATUS truncates to the status byte: any u64 is a status, so it may be accepted.
        if expectRefusal(client.receive(), to: code, "with garbage", zeroAllowed: code == .setStatus) {
          try expectInStep(client, features: features, "\(code.name) with garbage")
        } else {
          closedCount += 1
        }
      }
    }
    // One connection per case (and the warm-up): none was lost or merged.
    #expect(backend.server.connectionsServed == 1 + FrontendRequest.allKnown.count + garbageCases)
    #expect(garbageCases == 29)
    // Requests with a reply of their own and no failure value in it can only be refused by closing.
    #expect(closedCount > 0 && closedCount < FrontendRequest.allKnown.count + garbageCases)

    // An unknown request code is refused, the stream stays in step.
    do {
      let client = try backend.raw()
      try client.negotiate()
      try client.send(99, body: [1, 2, 3, 4, 5])
      if expectRefusal(client.receive(), to: FrontendRequest(rawValue: 99), "(unknown code)") {
        try expectInStep(client, features: features, "an unknown request")
      }
    }
    // A size field of 0xFFFF: the header is refused before any body is read; the connection closes.
    do {
      let client = try backend.raw()
      try client.negotiate()
      try client.send(FrontendRequest.getFeatures.rawValue, flags: 1, size: 0xFFFF)
      #expect(client.receive().isClosed)
    }
    // Reserved flag bits and a wrong version close the connection too.
    for flags: UInt32 in [0x1 | 0x100, 0x2] {
      let client = try backend.raw()
      try client.send(FrontendRequest.getFeatures.rawValue, flags: flags)
      #expect(client.receive().isClosed, "flags 0x\(String(flags, radix: 16))")
    }
    // A header cut short, and a body cut short, then the front-end hangs up.
    do {
      let client = try backend.raw()
      try client.channel.sendRaw([1, 0, 0, 0, 1, 0])
    }
    do {
      let client = try backend.raw()
      try client.negotiate()
      try client.send(FrontendRequest.setFeatures.rawValue, body: [1, 2, 3], size: 8)
    }

    // Wrong descriptor counts.
    do {
      let client = try backend.raw()
      try client.negotiate()
      let mem = try SharedMemory(anonymous: "betests-table", size: 64 << 10)
      let table = Payload.memoryTable(
        MemoryTable(regions: [
          MemoryRegion(guestPhysAddr: 0, memorySize: 64 << 10, userAddr: mem.address, mmapOffset: 0)
        ]))
      let extra = [try SharedMemory(anonymous: "x", size: 4096).fd, try EventFD().fd]
      expectRefusal(
        try client.exchange(.setMemTable, table, fds: [mem.fd] + extra), to: .setMemTable, "with 1 region and 3 fds")
      try expectInStep(client, features: features, "SET_MEM_TABLE with 3 fds")
      let twoFDs = [try EventFD().fd, try EventFD().fd]
      if expectRefusal(try client.exchange(.getFeatures, flags: 1, fds: twoFDs), to: .getFeatures, "with 2 fds") {
        try expectInStep(client, features: features, "GET_FEATURES with 2 fds")
      }
    }
    do {
      let client = try backend.raw()
      try client.negotiate()
      let noFD = Payload.u64(Limits.vringNoFDMask)
      expectRefusal(
        try client.exchange(.setVringKick, noFD, fds: [try EventFD().fd]), to: .setVringKick, "with NOFD and an fd")
      expectRefusal(try client.exchange(.setVringCall, .u64(0)), to: .setVringCall, "without NOFD and without an fd")
      try expectInStep(client, features: features, "SET_VRING_KICK with NOFD and an fd")
    }

    // Ring addresses outside the memory table: SET_VRING_KICK (which starts the ring) is refused.
    do {
      let client = try backend.raw()
      try client.negotiate()
      let mem = try SharedMemory(anonymous: "betests-ring", size: 64 << 10)
      let table = Payload.memoryTable(
        MemoryTable(regions: [
          MemoryRegion(guestPhysAddr: 0, memorySize: 64 << 10, userAddr: mem.address, mmapOffset: 0)
        ]))
      #expect(try client.exchange(.setMemTable, table, fds: [mem.fd]).u64 == 0)
      #expect(try client.exchange(.setVringNum, .vringState(VringState(index: 0, num: 256))).u64 == 0)
      let outside = mem.address + (1 << 20)
      let address = VringAddress(index: 0, desc: outside, used: outside + 0x2000, avail: outside + 0x1000)
      #expect(try client.exchange(.setVringAddr, .vringAddress(address)).u64 == 0)
      expectRefusal(
        try client.exchange(.setVringKick, .u64(0), fds: [try EventFD().fd]), to: .setVringKick,
        "with rings outside memory")
      // A ring straddling the end of the region is refused as well.
      let straddling = VringAddress(
        index: 0, desc: mem.address + (64 << 10) - 16, used: mem.address + 0x2000, avail: mem.address + 0x1000)
      #expect(try client.exchange(.setVringAddr, .vringAddress(straddling)).u64 == 0)
      expectRefusal(
        try client.exchange(.setVringKick, .u64(0), fds: [try EventFD().fd]), to: .setVringKick,
        "with a straddling table")
      // GET_VRING_BASE of that never-started ring: base 0 (or a closed connection), no crash.
      let base = try client.exchange(.getVringBase, flags: 1, .vringState(VringState(index: 0, num: 0)))
      if case .reply(let m) = base {
        #expect(m.body == Payload.vringState(VringState(index: 0, num: 0)).encoded())
      } else {
        #expect(base.isClosed, "\(base)")
      }
    }
    // ADD_MEM_REG of a region overlapping one already there; REM_MEM_REG of one that is not.
    do {
      let client = try backend.raw()
      try client.negotiate()
      let a = try SharedMemory(anonymous: "betests-slot-a", size: 64 << 10)
      let b = try SharedMemory(anonymous: "betests-slot-b", size: 64 << 10)
      let regionA = MemoryRegion(guestPhysAddr: 0x10_0000, memorySize: 64 << 10, userAddr: a.address, mmapOffset: 0)
      let sameGPA = MemoryRegion(guestPhysAddr: 0x10_8000, memorySize: 64 << 10, userAddr: b.address, mmapOffset: 0)
      let sameUVA = MemoryRegion(
        guestPhysAddr: 0x80_0000, memorySize: 64 << 10, userAddr: a.address + 0x100, mmapOffset: 0)
      #expect(try client.exchange(.addMemReg, .singleRegion(SingleMemoryRegion(regionA)), fds: [a.fd]).u64 == 0)
      // The same region again (QEMU 7.2 sends it once per vhost_dev of a multi-queue net device) is
      // accepted and counted: it takes one more REM_MEM_REG to go.
      #expect(try client.exchange(.addMemReg, .singleRegion(SingleMemoryRegion(regionA)), fds: [a.fd]).u64 == 0)
      for (what, region, fd) in [
        ("overlapping in GPA", sameGPA, b.fd), ("overlapping in UVA", sameUVA, b.fd),
      ] {
        expectRefusal(
          try client.exchange(.addMemReg, .singleRegion(SingleMemoryRegion(region)), fds: [fd]), to: .addMemReg, what)
      }
      // A region larger than its file (SIGBUS territory) is refused.
      let tooBig = MemoryRegion(guestPhysAddr: 0x100_0000, memorySize: 1 << 20, userAddr: b.address, mmapOffset: 0)
      expectRefusal(
        try client.exchange(.addMemReg, .singleRegion(SingleMemoryRegion(tooBig)), fds: [b.fd]), to: .addMemReg,
        "larger than its file")
      #expect(try client.exchange(.remMemReg, .singleRegion(SingleMemoryRegion(regionA))).u64 == 0)
      #expect(try client.exchange(.remMemReg, .singleRegion(SingleMemoryRegion(regionA))).u64 == 0)
      expectRefusal(
        try client.exchange(.remMemReg, .singleRegion(SingleMemoryRegion(regionA))), to: .remMemReg, "a third time")
      try expectInStep(client, features: features, "ADD/REM_MEM_REG abuse")
    }
    // GET_VRING_BASE on a ring never set up at all.
    do {
      let client = try backend.raw()
      try client.negotiate()
      let base = try client.exchange(.getVringBase, flags: 1, .vringState(VringState(index: 0, num: 0)))
      if case .reply(let m) = base {
        #expect(m.body == Payload.vringState(VringState(index: 0, num: 0)).encoded())
        try expectInStep(client, features: features, "GET_VRING_BASE of an unused ring")
      } else {
        #expect(base.isClosed, "\(base)")
      }
    }
    // Before SET_OWNER.
    do {
      let client = try backend.raw()
      try client.negotiate(owner: false)
      let mem = try SharedMemory(anonymous: "betests-owner", size: 64 << 10)
      let table = Payload.memoryTable(
        MemoryTable(regions: [
          MemoryRegion(guestPhysAddr: 0, memorySize: 64 << 10, userAddr: mem.address, mmapOffset: 0)
        ]))
      expectRefusal(try client.exchange(.setMemTable, table, fds: [mem.fd]), to: .setMemTable, "before SET_OWNER")
      expectRefusal(
        try client.exchange(.setVringNum, .vringState(VringState(index: 0, num: 256))), to: .setVringNum,
        "before SET_OWNER")
      expectRefusal(
        try client.exchange(
          .addMemReg,
          .singleRegion(
            SingleMemoryRegion(
              MemoryRegion(guestPhysAddr: 0, memorySize: 64 << 10, userAddr: mem.address, mmapOffset: 0))),
          fds: [mem.fd]),
        to: .addMemReg, "before SET_OWNER")
      try expectInStep(client, features: features, "requests before SET_OWNER")
    }

    // The server still negotiates and serves normally.
    try expectHealthy(backend)
    #expect(backend.waitIdle())
    expectDescriptorCount(fdsBefore, before: listingBefore)
  }

  @Test(
    "hostile rings: loops, nested indirect tables, bad addresses, bad heads, avail index jumps (next() and bursts)",
    arguments: [false, true])
  func hostileRings(bursts: Bool) throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 1, bursts: bursts))
    defer { backend.stop() }
    try expectHealthy(backend)
    #expect(backend.waitIdle())
    let fdsBefore = settledDescriptorCount()
    let listingBefore = openDescriptors()
    do {
      let connection = try backend.connect()
      defer { connection.close() }
      let frontend = connection.device()
      let driver = try DeviceDriver(
        frontend: frontend, features: [.version1, .indirectDesc], queueCount: 1, queueSize: 256)
      let q = driver.queues[0]
      let err = try EventFD()
      try frontend.setVringErr(0, err.fd)
      let ring = RawSplitRing(q.ring, in: driver.memory)
      let mem = driver.memory.memory
      let session = try #require(backend.server.currentSession)
      let handle = session.queues[0]
      let r = try driver.allocate(256)
      let w = try driver.allocate(256)
      let tableA = try driver.allocate(64, alignment: 16)
      let tableB = try driver.allocate(64, alignment: 16)
      let servedBefore = backend.device.chains(0)

      /// Publishes `head`, kicks, and returns its used element.
      func serve(_ head: UInt16) throws -> RawUsed {
        let from = try ring.usedIndex
        try ring.publish(head)
        try q.kick.signal()
        return try ring.waitUsed(from: from, to: from &+ 1, call: q.call)[0]
      }
      var errors = 0
      /// The chain at `head` comes back empty with `error` counted and VRING_ERR signalled.
      func expectRejected(_ head: UInt16, _ error: ChainError?, sourceLocation: SourceLocation = #_sourceLocation)
        throws
      {
        let used = try serve(head)
        #expect(used == RawUsed(id: UInt32(head), length: 0), sourceLocation: sourceLocation)
        errors += 1
        #expect(
          waitChainErrors(handle, errors) { error == nil || $0 == error },
          "chain errors: \(handle.chainErrors), last: \(String(describing: handle.lastChainError))",
          sourceLocation: sourceLocation)
        #expect(
          waitUntil { err.wait(timeoutMilliseconds: 0) }, "VRING_ERR not signalled", sourceLocation: sourceLocation)
        err.drain()
      }
      var serial = 0
      /// A valid chain at descriptors 10/11 is still served, echo checked.
      func expectServed(sourceLocation: SourceLocation = #_sourceLocation) throws {
        serial += 1
        let input = pattern(seed: 50, serial, count: 100)
        try mem.write(input, at: r)
        try mem.fill(0, at: w, count: 256)
        try ring.setDescriptor(
          10, address: driver.memory.gpa(r), length: 100, flags: SplitDescriptorFlags.next, next: 11)
        try ring.setDescriptor(11, address: driver.memory.gpa(w), length: 256, flags: SplitDescriptorFlags.write)
        #expect(try serve(10) == RawUsed(id: 10, length: 100), sourceLocation: sourceLocation)
        #expect(try mem.read(at: w, count: 100) == xor5a(input), sourceLocation: sourceLocation)
      }

      try expectServed()
      // A loop: 0 → 1 → 0.
      try ring.setDescriptor(0, address: driver.memory.gpa(r), length: 16, flags: SplitDescriptorFlags.next, next: 1)
      try ring.setDescriptor(1, address: driver.memory.gpa(r), length: 16, flags: SplitDescriptorFlags.next, next: 0)
      try expectRejected(0, .loop(head: 0))
      try expectServed()
      // A descriptor pointing at itself.
      try ring.setDescriptor(2, address: driver.memory.gpa(r), length: 16, flags: SplitDescriptorFlags.next, next: 2)
      try expectRejected(2, .loop(head: 2))
      // A loop inside an indirect table.
      try writeDescriptor(
        mem, at: tableA, address: driver.memory.gpa(r), length: 8, flags: SplitDescriptorFlags.next, next: 1)
      try writeDescriptor(
        mem, at: tableA + 16, address: driver.memory.gpa(r), length: 8, flags: SplitDescriptorFlags.next, next: 0)
      try ring.setDescriptor(3, address: driver.memory.gpa(tableA), length: 32, flags: SplitDescriptorFlags.indirect)
      try expectRejected(3, .loop(head: 3))
      try expectServed()
      // An indirect table inside an indirect table.
      try writeDescriptor(mem, at: tableB, address: driver.memory.gpa(r), length: 16, flags: 0, next: 0)
      try writeDescriptor(
        mem, at: tableA, address: driver.memory.gpa(tableB), length: 16, flags: SplitDescriptorFlags.indirect, next: 0)
      try ring.setDescriptor(4, address: driver.memory.gpa(tableA), length: 16, flags: SplitDescriptorFlags.indirect)
      try expectRejected(4, .nestedIndirect(head: 4))
      try expectServed()
      // INDIRECT together with NEXT; a table whose size is not a multiple of 16; a table outside memory.
      try ring.setDescriptor(
        5, address: driver.memory.gpa(tableB), length: 16,
        flags: SplitDescriptorFlags.indirect | SplitDescriptorFlags.next, next: 6)
      try expectRejected(5, .badIndirectTable(head: 5, length: 16))
      try ring.setDescriptor(5, address: driver.memory.gpa(tableB), length: 20, flags: SplitDescriptorFlags.indirect)
      try expectRejected(5, .badIndirectTable(head: 5, length: 20))
      try ring.setDescriptor(5, address: 0xdead_0000_0000, length: 32, flags: SplitDescriptorFlags.indirect)
      try expectRejected(5, nil)
      // A buffer outside guest memory; one wrapping around the address space; one straddling its end.
      try ring.setDescriptor(6, address: 0xdead_0000_0000, length: 64, flags: 0)
      try expectRejected(6, nil)
      #expect(handle.lastChainError.map(isUnmapped) == true, "\(String(describing: handle.lastChainError))")
      try ring.setDescriptor(6, address: .max - 8, length: 64, flags: SplitDescriptorFlags.write)
      try expectRejected(6, nil)
      try ring.setDescriptor(
        6, address: driver.memory.gpa(UInt64(driver.memory.size) - 32), length: 64, flags: SplitDescriptorFlags.write)
      try expectRejected(6, nil)
      try expectServed()
      // A next index outside the table; a readable buffer after a writable one.
      try ring.setDescriptor(7, address: driver.memory.gpa(r), length: 8, flags: SplitDescriptorFlags.next, next: 999)
      try expectRejected(7, .nextOutOfRange(999, size: 256))
      try ring.setDescriptor(
        7, address: driver.memory.gpa(w), length: 8, flags: SplitDescriptorFlags.write | SplitDescriptorFlags.next,
        next: 8)
      try ring.setDescriptor(8, address: driver.memory.gpa(r), length: 8, flags: 0)
      try expectRejected(7, .readableAfterWritable(head: 7))
      try expectServed()
      // A head outside the ring: nothing can be returned for it, but it is counted and skipped.
      do {
        let from = try ring.usedIndex
        try ring.publish(300)
        try q.kick.signal()
        errors += 1
        #expect(waitChainErrors(handle, errors) { $0 == .headOutOfRange(300, size: 256) })
        #expect(try ring.usedIndex == from)
        err.drain()
      }
      try expectServed()
      #expect(waitUntil { backend.device.chains(0) == servedBefore + serial })

      // The avail index jumps by more than the ring size: no crash, the ring stops serving.
      let stoppedAt = try ring.availIndex
      let usedAt = try ring.usedIndex
      try ring.setAvailIndex(stoppedAt &+ 300)
      for _ in 0..<3 {
        try q.kick.signal()
        errors += 1
        #expect(
          waitChainErrors(handle, errors) { $0 == .availIndexJump(from: stoppedAt, to: stoppedAt &+ 300, size: 256) },
          "chain errors \(handle.chainErrors), expected \(errors); last \(String(describing: handle.lastChainError))")
      }
      #expect(try ring.usedIndex == usedAt)
      // The front-end can recover the ring: stop it, repair the index, restart where it stood.
      #expect(try frontend.getVringBase(0) == UInt32(stoppedAt))
      // GET_VRING_BASE first serves what the driver published, so it meets the jump once more.
      errors += 1
      try ring.setAvailIndex(stoppedAt)
      try frontend.setVringBase(0, UInt32(stoppedAt))
      try frontend.setVringKick(0, q.kick.fd)
      try expectServed()
      #expect(handle.chainErrors == errors)
    }
    try expectHealthy(backend)
    #expect(backend.waitIdle())
    expectDescriptorCount(fdsBefore, before: listingBefore)
  }
}
