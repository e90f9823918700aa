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
  }
}
