import Testing
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTransport

extension FrontendTests {
  @Suite struct BackendChannel {
    static let backendReq: UInt64 = 1 << 5
    static let replyAck: UInt64 = 1 << 3

    /// A fake that keeps the descriptor of SET_BACKEND_REQ_FD in `stash` (and acks it).
    static func fake(stash: Shared<OwnedFD?>, override: (@Sendable (FakeRequest) -> FakeAction?)? = nil)
      throws -> FakeBackend
    {
      try FakeBackend(device: .withProtocolFeatures(backendReq | replyAck)) { request, fds in
        if request.code == .setBackendReqFD, let fd = fds.first { stash.set(fd) }
        return override?(request)
      }
    }

    /// Sends `message` on the back-end channel and returns the front-end's REPLY_ACK status.
    static func ask(_ channel: MessageChannel, _ message: BackendMessage) throws -> UInt64? {
      try channel.send(message)
      return try channel.receiveReply(to: message.code).message.payload.u64Value
    }

    @Test func frontendServesBackendRequests() throws {
      let stash = Shared<OwnedFD?>(nil)
      let fake = try Self.fake(stash: stash)
      let connection = fake.connect()
      let view = connection.device()
      try view.negotiate()

      let setFD = fake.requests(.setBackendReqFD)
      #expect(setFD.count == 1)
      #expect(setFD.first?.fdCount == 1)
      #expect(setFD.first?.flags == 0x9)
      let server = try #require(view.backendChannel)
      let fd = try #require(stash.take())
      let channel = MessageChannel(socket: UnixSocket(fd), timeoutMilliseconds: 2000)
      let needReply: HeaderFlags = [.version1, .needReply]

      let configChange = try Self.ask(channel, BackendMessage(.configChange, flags: needReply))
      #expect(configChange == 0)

      let miss = IOTLBMessage(iova: 0x1000, size: 4096, userAddr: 0, permissions: 1, type: .miss)
      let iotlb = try Self.ask(channel, BackendMessage(.iotlbMsg, flags: needReply, payload: .iotlb(miss)))
      #expect(iotlb != nil && iotlb != 0, "IOTLB misses are not supported here")

      let uuid: [UInt8] = Array(1...16)
      let add = try Self.ask(
        channel, BackendMessage(.sharedObjectAdd, flags: needReply, payload: .sharedObject(SharedObject(uuid: uuid))))
      #expect(add == 0)
      #expect(view.backendChannel?.sharedObjects.contains(uuid) == true)

      let unknown = BackendRequest(rawValue: 77)
      let status = try Self.ask(channel, BackendMessage(unknown, flags: needReply, payload: .opaque([1, 2, 3, 4])))
      #expect(status != nil && status != 0)

      #expect(server.configChanges == 1)
      #expect(server.rejected.contains("BACKEND_IOTLB_MSG"))
      finish(connection, fake)
    }

    /// A back-end may send a back-end-channel request and wait for its ack while it handles a
    /// front-end request (QEMU serves the back-end channel while it waits for a reply, for this
    /// reason). Here the channel thread needs the connection's lock to read the negotiated state,
    /// and that lock is held for the whole front-end request: the ack only comes after the
    /// front-end request ends (here: after the back-end gave up waiting).
    @Test func backendRequestIsAnsweredWhileAFrontendRequestIsOutstanding() throws {
      let stash = Shared<OwnedFD?>(nil)
      let ackWhileBusy = Shared<String?>(nil)
      let fake = try Self.fake(stash: stash) { request in
        guard request.code == .setOwner, let fd = stash.get() else { return nil }
        let channel = MessageChannel(socket: UnixSocket(fd), timeoutMilliseconds: 1000)
        do {
          let status = try Self.ask(channel, BackendMessage(.configChange, flags: [.version1, .needReply]))
          ackWhileBusy.set("ack \(status.map(String.init) ?? "nil")")
        } catch {
          ackWhileBusy.set("\(error)")
        }
        return .reply(.u64(0))
      }
      let connection = fake.connect(timeoutMilliseconds: 3000)
      let view = connection.device()
      try view.negotiate()

      try view.setOwner()
      #expect(view.backendChannel?.configChanges == 1)
      #expect(ackWhileBusy.get() == "ack 0")
      finish(connection, fake)
    }

    /// A hostile back-end floods the back-end channel: thousands of requests, fds attached where they
    /// may be (host notifiers), garbage codes and a shared-object table attack. The front-end keeps
    /// serving its own requests, holds a bounded amount of state, and closes every fd it was sent.
    @Test func backendChannelFloodIsBoundedAndLeaksNothing() throws {
      let stash = Shared<OwnedFD?>(nil)
      let fake = try Self.fake(stash: stash)
      let connection = fake.connect()
      let view = connection.device()
      try view.negotiate()
      let server = try #require(view.backendChannel)
      let channel = MessageChannel(socket: UnixSocket(try #require(stash.take())), timeoutMilliseconds: 5000)
      let notifier = try SharedMemory(anonymous: "flood-notifier", size: 4096)
      let rounds = 2000
      for i in 0..<rounds {
        try channel.send(BackendMessage(.configChange))
        var uuid = [UInt8](repeating: 0, count: 16)
        withUnsafeBytes(of: UInt64(i).littleEndian) { for (k, b) in $0.enumerated() { uuid[k] = b } }
        uuid[15] = 0xf1
        for _ in 0..<3 {  // 6000 distinct objects offered: more than the table holds
          uuid[14] &+= 1
          try channel.send(BackendMessage(.sharedObjectAdd, payload: .sharedObject(SharedObject(uuid: uuid))))
        }
        // A host notifier with an fd (we do not map host notifiers: refused, the fd closed).
        let area = VringArea(indexAndFlags: 0, size: 4096, offset: 0)
        let dup = try notifier.fd.duplicate()
        try channel.send(BackendMessage(.vringHostNotifier, payload: .vringArea(area)), fds: [dup])
        // An unknown code with a body.
        try channel.send(BackendMessage(BackendRequest(rawValue: 200 + UInt32(i % 50)), payload: .opaque([1, 2, 3])))
      }
      // The channel is in order: once this is acked, everything before it was handled.
      let last = try Self.ask(channel, BackendMessage(.configChange, flags: [.version1, .needReply]))
      #expect(last == 0)
      #expect(server.configChanges == rounds + 1)
      #expect(server.sharedObjects.count == 4096, "the shared-object table is bounded")
      #expect(server.rejectedCount == rounds * 2, "every host notifier and unknown code refused")
      // One more object, acked: the full table refuses it.
      let extra = SharedObject(uuid: [UInt8](repeating: 0xee, count: 16))
      let full = try Self.ask(
        channel, BackendMessage(.sharedObjectAdd, flags: [.version1, .needReply], payload: .sharedObject(extra)))
      #expect(full != nil && full != 0)
      #expect(server.rejected.count <= 64, "the rejection log is bounded")
      #expect(openDescriptors(linkingTo: "flood-notifier") == 1, "only our own descriptor is left")
      // The front-end still works.
      #expect(try view.getFeatures().rawValue != 0)
      finish(connection, fake)
    }
  }
}
