import Foundation
import Testing
import VhostBackend
import VhostFrontend
import VhostProtocol
import VhostSystem
import Virtqueue

extension BackendTests {
  /// Our front-end's packed driver ring against our back-end's packed device ring.
  @Suite struct PackedLoopback {
    func run(eventIdx: Bool) throws {
      let backend = try LoopbackBackend(device: EchoDevice(queues: 1, bursts: eventIdx))
      defer { backend.stop() }
      let connection = try backend.connect()
      defer { connection.close() }
      let frontend = connection.device()
      try frontend.negotiate()
      try frontend.setOwner()
      var wanted: VirtioFeatures = [.version1, .ringPacked]
      if eventIdx { wanted.insert(.eventIdx) }
      let acked = try frontend.setFeatures(wanted)
      #expect(acked.contains(.ringPacked))
      let memory = try DriverMemory(size: 2 << 20)
      try frontend.setMemTable([GuestRegion(memory.memory, guestPhysAddr: memory.guestBase)])
      let size: UInt16 = 64
      let ring = try PackedDriverQueue(size: size, in: memory, eventIndex: eventIdx)
      let kick = try EventFD()
      let call = try EventFD()
      func start(_ ring: PackedDriverQueue, base: UInt32) throws {
        try frontend.setVringNum(0, UInt32(size))
        try frontend.setVringBase(0, base)
        try frontend.setVringAddr(
          VringAddress(
            index: 0, desc: ring.descUserAddr, used: ring.deviceEventUserAddr, avail: ring.driverEventUserAddr))
        try frontend.setVringKick(0, kick.fd)
        try frontend.setVringCall(0, call.fd)
        try frontend.setVringEnable(0, true)
      }
      try start(ring, base: PackedDriverQueue.initialBase)
      let input = try memory.allocate(4096)
      let output = try memory.allocate(4096)
      var done = 0
      // 5 × the ring size: the wrap counters flip many times.
      for i in 0..<(Int(size) * 5) {
        let data = pattern(seed: UInt64(i), 0, count: 100 + i % 50)
        try memory.memory.write(data, at: input)
        try ring.add([
          DriverBuffer(guestAddress: memory.gpa(input), length: UInt32(data.count), deviceWritable: false),
          DriverBuffer(guestAddress: memory.gpa(output), length: 256, deviceWritable: true),
        ])
        if ring.needsKick() { try kick.signal() }
        var used: [UsedElement] = []
        let deadline = Date().addingTimeInterval(5)
        while used.isEmpty && Date() < deadline {
          used = try ring.reapUsed()
          if used.isEmpty { _ = call.wait(timeoutMilliseconds: 20) }
        }
        guard let u = used.first else {
          Issue.record("chain \(i) was not completed")
          return
        }
        #expect(Int(u.length) == data.count)
        #expect(try memory.memory.read(at: output, count: data.count) == data.map { $0 ^ 0x5a })
        done += 1
        // Halfway: stop the ring and restart it from the base GET_VRING_BASE returned.
        if i == Int(size) * 2 + 7 {
          let base = try frontend.getVringBase(0)
          let b = VringBase(num: base, packed: true)
          #expect(b.availIndex == b.usedIndex)
          try start(ring, base: base)
        }
      }
      #expect(done == Int(size) * 5)
    }

    @Test(
      "packed ring, EVENT_IDX off/on (on: burst path): echo verified across many wraps and a stop/restart",
      arguments: [false, true])
    func packed(eventIdx: Bool) throws { try run(eventIdx: eventIdx) }
  }
}
