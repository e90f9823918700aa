import Testing
import VhostFrontend
import VhostProtocol
import VhostSystem

extension FrontendTests {
  @Suite struct Negotiation {
    @Test func withoutBit30OnlyGetFeaturesIsSentAndVringEnableIsRefused() throws {
      let fake = try FakeBackend(device: FakeDevice(features: [.version1, .indirectDesc], protocolFeatures: 0x1f))
      let connection = fake.connect()
      let view = connection.device()

      let state = try view.negotiate()
      #expect(fake.codes == [.getFeatures])
      #expect(!state.protocolFeaturesEnabled)
      #expect(state.protocolFeatures.isEmpty)
      #expect(state.backendFeatures == [.version1, .indirectDesc])

      let sent = fake.count
      let error = catching { try view.setVringEnable(0, true) }
      #expect(error?.notNegotiatedRequest == "SET_VRING_ENABLE", "\(String(describing: error))")
      finish(connection, fake)
      #expect(fake.count == sent)
      #expect(fake.codes == [.getFeatures])
    }

    @Test func offerIsMaskedAndOnlyNegotiatedRequestsGoOut() throws {
      let pagefault: UInt64 = 1 << 8
      let cryptoSession: UInt64 = 1 << 7
      let offer = seedProtocolFeatures | pagefault | cryptoSession
      let fake = try FakeBackend(device: .withProtocolFeatures(offer))
      let connection = fake.connect()
      let view = connection.device()

      let state = try view.negotiate()
      #expect(fake.codes == [.getFeatures, .getProtocolFeatures, .setProtocolFeatures, .getQueueNum])
      let setProtocol = fake.requests(.setProtocolFeatures)
      #expect(setProtocol.first?.u64 == 0x1f)
      let masked: UInt64? = offer & FrontendConfiguration.defaultProtocolFeatures.rawValue
      let sentValue: UInt64? = setProtocol.first?.u64
      #expect(sentValue == masked)
      #expect(!fake.codes.contains(.getMaxMemSlots))
      #expect(!fake.codes.contains(.setBackendReqFD))
      #expect(state.protocolFeatures.rawValue == 0x1f)
      #expect(state.backendProtocolFeatures.rawValue == offer)
      #expect(state.maxQueues == 4)
      #expect(state.maxMemSlots == nil)
      #expect(state.migrationBlocker == nil)
      #expect(view.backendChannel == nil)

      let sent = fake.count
      let gated: [(String, FrontendError?)] = [
        ("GET_CONFIG", catching { _ = try view.getConfig(size: 8) }),
        ("SET_STATUS", catching { try view.setStatus(DeviceStatus.acknowledge) }),
        ("RESET_DEVICE", catching { try view.resetDevice() }),
        ("GET_INFLIGHT_FD", catching { _ = try view.getInflightFD(numQueues: 1, queueSize: 128) }),
        ("VRING_KICK", catching { try view.vringKick(0) }),
      ]
      for (name, error) in gated {
        #expect(error?.notNegotiatedRequest == name, "\(name): \(String(describing: error))")
      }
      finish(connection, fake)
      #expect(fake.count == sent)
    }

    @Test func replyAckSetsNeedReplyAndAcceptsZero() throws {
      let fake = try FakeBackend(device: .withProtocolFeatures(seedProtocolFeatures))
      let connection = fake.connect()
      let view = connection.device()
      try view.negotiate()

      try view.setOwner()
      try view.setFeatures([.version1])
      try view.setVringNum(0, 256)
      for code in [FrontendRequest.setOwner, .setFeatures, .setVringNum] {
        let sent = fake.requests(code)
        #expect(sent.count == 1, "\(code)")
        #expect(sent.first?.flags == 0x9, "\(code) must carry NEED_REPLY")
      }
      // Requests with an explicit reply never ask for an ack.
      #expect(fake.requests(.getFeatures).first?.flags == 0x1)
      #expect(fake.requests(.getQueueNum).first?.flags == 0x1)
      finish(connection, fake)
    }

    @Test func nonZeroAckIsRefused() throws {
      let fake = try FakeBackend(device: .withProtocolFeatures(seedProtocolFeatures)) { request, _ in
        request.code == .setVringNum && request.vringState?.index == 1 ? .reply(.u64(1)) : nil
      }
      let connection = fake.connect()
      let view = connection.device()
      try view.negotiate()

      try view.setVringNum(0, 256)
      let error = catching { try view.setVringNum(1, 256) }
      let refusal = error?.refusal
      #expect(refusal?.request == "SET_VRING_NUM", "\(String(describing: error))")
      #expect(refusal?.status == 1)
      finish(connection, fake)
    }

    @Test func withoutReplyAckNoNeedReplyFlag() throws {
      let mq: UInt64 = 1 << 0
      let fake = try FakeBackend(device: .withProtocolFeatures(mq))
      let connection = fake.connect()
      let view = connection.device()
      let state = try view.negotiate()
      #expect(!state.protocolFeatures.contains(.replyAck))

      // The fake never answers these: the front-end must not wait for an ack.
      try view.setOwner()
      try view.setFeatures([.version1])
      try view.setVringNum(0, 256)
      finish(connection, fake)
      for code in [FrontendRequest.setOwner, .setFeatures, .setVringNum] {
        let sent = fake.requests(code)
        #expect(sent.count == 1, "\(code)")
        #expect(sent.first?.flags == 0x1, "\(code) must not carry NEED_REPLY")
      }
    }

    @Test func viewsAfterTheFirstSendOnlyPerQueueRequests() throws {
      let fake = try FakeBackend(device: .withProtocolFeatures(seedProtocolFeatures))
      let connection = fake.connect()
      let first = connection.device()
      let (memory, region) = try memoryRegion("fetest-views", guestPhysAddr: 0)

      try first.negotiate()
      try first.setOwner()
      try first.setFeatures([.version1])
      try first.setMemTable([region])
      try first.netSetMTU(1500)
      try first.setVringNum(0, 256)
      try first.setVringNum(1, 256)
      let mark = fake.count

      let second = connection.device(firstQueueIndex: 2)
      #expect(!second.isFirst)
      try second.negotiate()
      try second.setOwner()
      try second.setFeatures([.version1])
      try second.setMemTable([region])
      try second.netSetMTU(1500)
      try second.setVringNum(0, 256)
      try second.setVringNum(1, 256)
      finish(connection, fake)
      withExtendedLifetime(memory) {}

      let log = fake.log
      let firstPart = log[..<mark].map(\.code)
      let secondPart = Array(log[mark...])
      for code in [FrontendRequest.setOwner, .setMemTable, .getQueueNum, .netSetMTU] {
        #expect(firstPart.contains(code), "view 0 must send \(code)")
        #expect(!secondPart.contains { $0.code == code }, "view 2 must not send \(code)")
      }
      #expect(log[..<mark].filter { $0.code == .setVringNum }.map { $0.vringState?.index } == [0, 1])
      #expect(secondPart.filter { $0.code == .setVringNum }.map { $0.vringState?.index } == [2, 3])
    }

    @Test func setLogBaseWaitsForTheReplyWithLogShmfd() throws {
      let fake = try FakeBackend(device: .withProtocolFeatures(seedProtocolFeatures)) { request, _ in
        guard request.code == .setLogBase else { return nil }
        return .raw(MessageHeader(request: 6, flags: HeaderFlags(rawValue: 0x5), size: 0).encoded())
      }
      let connection = fake.connect()
      let view = connection.device()
      let state = try view.negotiate()
      #expect(state.migrationBlocker == nil)

      let log = try SharedMemory(anonymous: "fetest-log", size: 4096)
      try view.setLogBase(log)
      let sent = fake.requests(.setLogBase)
      #expect(sent.count == 1)
      #expect(sent.first?.fdCount == 1)
      #expect(sent.first?.flags == 0x1, "an explicit reply is expected, so no NEED_REPLY")
      #expect(sent.first?.payload == .log(LogDescription(mmapSize: 4096, mmapOffset: 0)))
      finish(connection, fake)
    }

    @Test func setLogBaseTimesOutWhenTheBackendDoesNotReply() throws {
      let fake = try FakeBackend(device: .withProtocolFeatures(seedProtocolFeatures)) { request, _ in
        request.code == .setLogBase ? .silent : nil
      }
      let connection = fake.connect()
      let view = connection.device()
      try view.negotiate()

      let log = try SharedMemory(anonymous: "fetest-log", size: 4096)
      let error = catching { try view.setLogBase(log) }
      guard case .transport(.timeout)? = error?.channelError else {
        Issue.record("expected a timeout, got \(String(describing: error))")
        return
      }
      finish(connection, fake)
    }

    @Test func withoutLogShmfdMigrationIsBlocked() throws {
      let mqAndReplyAck: UInt64 = 0x9
      let fake = try FakeBackend(device: .withProtocolFeatures(mqAndReplyAck))
      let connection = fake.connect()
      let view = connection.device()
      let state = try view.negotiate()
      let blocker = try #require(state.migrationBlocker)
      #expect(blocker.contains("migration is blocked"))

      let sent = fake.count
      let log = try SharedMemory(anonymous: "fetest-log", size: 4096)
      let error = catching { try view.setLogBase(log) }
      #expect(error?.notNegotiatedRequest == "SET_LOG_BASE", "\(String(describing: error))")
      finish(connection, fake)
      #expect(fake.count == sent)
    }
  }
}
