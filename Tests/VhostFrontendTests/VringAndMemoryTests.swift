import Testing
import VhostFrontend
import VhostProtocol
import VhostSystem

extension FrontendTests {
  @Suite struct Vrings {
    @Test func vringFileMessagesCarryIndexAndNoFDBit() throws {
      let fake = try FakeBackend(device: .withProtocolFeatures(0))
      let connection = fake.connect()
      let view = connection.device()
      try view.negotiate()

      let kick = try EventFD()
      try view.setVringKick(0, kick.fd)
      try view.setVringCall(3, nil)
      let err = try EventFD()
      try connection.device(firstQueueIndex: 2).setVringErr(1, err.fd)
      finish(connection, fake)

      let kicks = fake.requests(.setVringKick)
      #expect(kicks.count == 1)
      #expect(kicks.first?.fdCount == 1)
      #expect(kicks.first?.u64 == 0)
      let calls = fake.requests(.setVringCall)
      #expect(calls.count == 1)
      #expect(calls.first?.fdCount == 0)
      // (An operator expression compared with an optional inside #expect trips AddressSanitizer in
      // swift-testing 6.3.1 — it reads the literal as an Optional — so the value is named first.)
      let callValue: UInt64 = calls.first?.u64 ?? 0
      #expect(callValue == 3 | 0x100)
      let errs = fake.requests(.setVringErr)
      #expect(errs.first?.fdCount == 1)
      #expect(errs.first?.u64 == 3, "view 2's ring 1 is ring 3")
    }

    @Test func getVringBaseReplyForAnotherRingIsInvalid() throws {
      let fake = try FakeBackend(device: .withProtocolFeatures(seedProtocolFeatures)) { request, _ in
        guard request.code == .getVringBase, let s = request.vringState else { return nil }
        return .reply(.vringState(VringState(index: s.index == 1 ? 0 : s.index, num: 42)))
      }
      let connection = fake.connect()
      let view = connection.device()
      try view.negotiate()

      #expect(try view.getVringBase(0) == 42)
      let error = catching { _ = try view.getVringBase(1) }
      #expect(error?.invalidReplyRequest == "GET_VRING_BASE", "\(String(describing: error))")
      finish(connection, fake)
    }
  }

  @Suite struct MemoryTables {
    @Test func contiguousRegionsOfOneDescriptorMerge() throws {
      let fake = try FakeBackend(device: .withProtocolFeatures(0))
      let connection = fake.connect()
      let view = connection.device()
      try view.negotiate()

      let memory = try SharedMemory(anonymous: "fetest-merge", size: 2 * 4096)
      let low = GuestRegion(
        guestPhysAddr: 0x10_0000, size: 4096, userAddr: memory.address, mmapOffset: 0, fd: memory.fd)
      let high = GuestRegion(
        guestPhysAddr: 0x10_1000, size: 4096, userAddr: memory.address + 4096, mmapOffset: 4096, fd: memory.fd)
      try view.setMemTable([high, low])
      finish(connection, fake)

      let tables = fake.requests(.setMemTable)
      #expect(tables.count == 1)
      #expect(tables.first?.fdCount == 1)
      let regions = try #require(tables.first?.memoryTable).regions
      #expect(
        regions == [
          MemoryRegion(guestPhysAddr: 0x10_0000, memorySize: 2 * 4096, userAddr: memory.address, mmapOffset: 0)
        ])
    }

    @Test func regionsOfDifferentDescriptorsStayApart() throws {
      let fake = try FakeBackend(device: .withProtocolFeatures(0))
      let connection = fake.connect()
      let view = connection.device()
      try view.negotiate()

      let (m1, r1) = try memoryRegion("fetest-apart-1", guestPhysAddr: 0)
      let (m2, r2) = try memoryRegion("fetest-apart-2", guestPhysAddr: 4096)
      try view.setMemTable([r1, r2])
      finish(connection, fake)

      let tables = fake.requests(.setMemTable)
      #expect(tables.count == 1)
      #expect(tables.first?.fdCount == 2)
      let regions = try #require(tables.first?.memoryTable).regions
      #expect(regions.map(\.guestPhysAddr) == [0, 4096])
      #expect(regions.map(\.userAddr) == [m1.address, m2.address])
    }

    @Test func memorySlotsAddThenRemoveOneRegion() throws {
      let configureMemSlots: UInt64 = 1 << 15
      let replyAck: UInt64 = 1 << 3
      let fake = try FakeBackend(device: .withProtocolFeatures(configureMemSlots | replyAck))
      let connection = fake.connect()
      let view = connection.device()
      let state = try view.negotiate()
      #expect(state.maxMemSlots == 509)
      #expect(fake.requests(.getMaxMemSlots).count == 1)

      var memories: [SharedMemory] = []
      var regions: [GuestRegion] = []
      for i in 0..<10 {
        let (m, r) = try memoryRegion("fetest-slot-\(i)", guestPhysAddr: UInt64(i) * 4096)
        memories.append(m)
        regions.append(r)
      }
      try view.setMemTable(regions)
      let adds = fake.requests(.addMemReg)
      #expect(adds.count == 10)
      #expect(adds.allSatisfy { $0.fdCount == 1 })
      #expect(adds.compactMap(\.singleRegion?.guestPhysAddr) == (0..<10).map { UInt64($0) * 4096 })
      #expect(fake.requests(.setMemTable).isEmpty)

      let mark = fake.count
      var fewer = regions
      fewer.remove(at: 4)
      try view.setMemTable(fewer)
      let after = Array(fake.log[mark...])
      #expect(after.map(\.code) == [.remMemReg])
      // (Named values: an optional chain compared inside #expect trips ASan in swift-testing 6.3.1.)
      let removedGPA: UInt64 = after.first?.singleRegion?.guestPhysAddr ?? 0
      let removedUVA: UInt64 = after.first?.singleRegion?.userAddr ?? 0
      #expect(removedGPA == 4 * 4096)
      #expect(removedUVA == memories[4].address)
      finish(connection, fake)
    }
  }
}
