import Dispatch
import Foundation
import Synchronization
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTransport

/// One request as the fake back-end received it.
struct FakeRequest: Sendable, CustomStringConvertible {
  var code: FrontendRequest
  var flags: UInt32
  var size: UInt32
  var body: [UInt8]
  var fdCount: Int
  /// The body decoded with the request's layout, or nil when it does not decode.
  var payload: Payload?

  var needsReply: Bool { flags & HeaderFlags.needReply.rawValue != 0 }
  var u64: UInt64? { payload?.u64Value }
  var vringState: VringState? {
    if case .vringState(let s)? = payload { return s }
    return nil
  }
  var singleRegion: MemoryRegion? {
    if case .singleRegion(let r)? = payload { return r.region }
    return nil
  }
  var memoryTable: MemoryTable? {
    if case .memoryTable(let t)? = payload { return t }
    return nil
  }

  var description: String {
    "\(code.name) flags=0x\(String(flags, radix: 16)) size=\(size) fds=\(fdCount)"
  }
}

/// What the fake does after it received (and logged) a request.
enum FakeAction: Sendable {
  /// Sends nothing and reads the next request.
  case silent
  /// A well-formed reply: flags REPLY|version 1, the request's own code, `payload`, `fds` attached.
  case reply(Payload, fds: [OwnedFD] = [])
  /// Arbitrary bytes (forged headers, bodies), `fds` attached to the first byte.
  case raw([UInt8], fds: [OwnedFD] = [])
  /// Closes the socket; the script ends.
  case close
  /// Sends `bytes` (typically part of a message), then closes the socket; the script ends.
  case sendThenClose([UInt8])
}

/// A well-behaved device the fake impersonates unless a test overrides its answer: it answers the
/// GET_* requests, replies to SET_LOG_BASE with an empty body, and acks NEED_REPLY with `ack`.
struct FakeDevice: Sendable {
  var features: VirtioFeatures
  var protocolFeatures: UInt64
  var queueNum: UInt64 = 4
  var memSlots: UInt64 = UInt64(Limits.defaultMaxMemSlots)
  var ack: UInt64 = 0

  /// A back-end offering virtio bit 30 (and VERSION_1) and `protocolFeatures`.
  static func withProtocolFeatures(_ protocolFeatures: UInt64) -> FakeDevice {
    FakeDevice(features: [.version1, .protocolFeatures], protocolFeatures: protocolFeatures)
  }

  func respond(to request: FakeRequest) -> FakeAction {
    switch request.code {
    case .getFeatures: return .reply(.u64(features.rawValue))
    case .getProtocolFeatures: return .reply(.u64(protocolFeatures))
    case .getQueueNum: return .reply(.u64(queueNum))
    case .getMaxMemSlots: return .reply(.u64(memSlots))
    case .getVringBase, .getVringBaseSkipDrain:
      let index = request.vringState?.index ?? 0
      return .reply(.vringState(VringState(index: index, num: 0)))
    case .setLogBase: return .reply(.empty)
    default: return request.needsReply ? .reply(.u64(ack)) : .silent
    }
  }
}

/// A scripted back-end on one end of a socket pair. A background thread receives each request,
/// logs it (code, flags, body, descriptor count) under a lock, and answers as the responder says.
/// The script ends when the front-end closes its end, or on `.close` / `.sendThenClose`; at that
/// point the fake's socket is closed, before `join()` returns.
final class FakeBackend: Sendable {
  /// Decides the answer to one request; the request's descriptors are passed along (owned: keep
  /// them to use them, drop them to close them).
  typealias Responder = @Sendable (FakeRequest, [OwnedFD]) -> FakeAction

  private struct State {
    var log: [FakeRequest] = []
    var finished = false
    var endReason: String?
    var frontendSocket: UnixSocket?
    var backendSocket: UnixSocket?
  }

  private let state: Mutex<State>
  private let done = DispatchSemaphore(value: 0)

  init(responder: @escaping Responder) throws {
    ignoreSIGPIPE()
    let (front, back) = try UnixSocket.pair()
    state = Mutex(State(frontendSocket: front, backendSocket: back))
    let thread = Thread { [self] in
      self.run(responder)
      self.state.withLock { $0.finished = true }
      self.done.signal()
    }
    thread.name = "fake-vhost-user-backend"
    thread.start()
  }

  /// A fake playing `device`; `override` may answer a request differently (nil: the device's answer).
  convenience init(
    device: FakeDevice, override: (@Sendable (FakeRequest, [OwnedFD]) -> FakeAction?)? = nil
  ) throws {
    try self.init { request, fds in
      override?(request, fds) ?? device.respond(to: request)
    }
  }

  /// The front-end's connection over the other end of the pair (can be taken once).
  func connect(timeoutMilliseconds: Int = 300) -> VhostUserConnection {
    var configuration = FrontendConfiguration()
    configuration.timeoutMilliseconds = timeoutMilliseconds
    let socket = state.withLock { s in
      defer { s.frontendSocket = nil }
      return s.frontendSocket
    }
    guard let socket else { fatalError("FakeBackend.connect() called twice") }
    return VhostUserConnection(socket: socket, configuration: configuration)
  }

  /// Waits for the script to end; false if it did not within `seconds`.
  @discardableResult
  func join(seconds: Double = 10) -> Bool {
    if state.withLock({ $0.finished }) { return true }
    guard done.wait(timeout: .now() + seconds) == .success else { return false }
    done.signal()  // later joins return at once too
    return true
  }

  /// Every request received so far, in order.
  var log: [FakeRequest] { state.withLock { $0.log } }
  var codes: [FrontendRequest] { log.map(\.code) }
  var count: Int { state.withLock { $0.log.count } }
  func requests(_ code: FrontendRequest) -> [FakeRequest] { log.filter { $0.code == code } }
  /// Why the script ended (nil while it runs or when it ended by its own action).
  var endReason: String? { state.withLock { $0.endReason } }

  private func run(_ responder: Responder) {
    let socket = state.withLock { s in
      defer { s.backendSocket = nil }
      return s.backendSocket
    }
    guard let socket else { return }
    // The socket lives in these locals only: it is closed when this function returns.
    let channel = MessageChannel(socket: socket, timeoutMilliseconds: 2000)
    while true {
      let raw: RawMessage
      do {
        raw = try channel.receiveRaw(waitMilliseconds: -1)
      } catch {
        state.withLock { $0.endReason = error.description }
        return
      }
      let code = FrontendRequest(rawValue: raw.header.request)
      let request = FakeRequest(
        code: code, flags: raw.header.flags.rawValue, size: raw.header.size, body: raw.body,
        fdCount: raw.fds.count, payload: try? Payload.decode(raw.body, as: code.requestLayout, request: code.name))
      state.withLock { $0.log.append(request) }
      do {
        switch responder(request, raw.fds) {
        case .silent:
          continue
        case .reply(let payload, let fds):
          try channel.send(Message(code, flags: [.reply, .version1], payload: payload), fds: fds)
        case .raw(let bytes, let fds):
          try channel.sendRaw(bytes, fds: fds)
        case .close:
          socket.shutdown()
          return
        case .sendThenClose(let bytes):
          try channel.sendRaw(bytes)
          socket.shutdown()
          return
        }
      } catch {
        state.withLock { $0.endReason = error.description }
        return
      }
    }
  }
}

/// A lock-protected value shared between a test and a fake's responder.
final class Shared<Value: Sendable>: Sendable {
  private let value: Locked<Value>
  init(_ initial: Value) { value = Locked(initial) }
  func get() -> Value { value.withLock { $0 } }
  func set(_ new: Value) { value.withLock { $0 = new } }
  func take<T>() -> T? where Value == T? {
    value.withLock { v in
      defer { v = nil }
      return v
    }
  }
}
