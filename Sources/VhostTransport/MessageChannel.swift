import VhostProtocol
import VhostSystem

/// Why a message exchange failed.
public enum ChannelError: Error, Sendable, CustomStringConvertible {
  /// The socket failed, timed out or was closed.
  case transport(TransportError)
  /// The bytes did not form a valid message.
  case malformed(ProtocolError)
  /// A reply did not answer the request that was sent.
  case badReply(ReplyError)

  public var description: String {
    switch self {
    case .transport(let e): e.description
    case .malformed(let e): e.description
    case .badReply(let e): e.description
    }
  }
}

/// A message as it came off the socket: validated header, body bytes and owned descriptors.
public struct RawMessage: Sendable {
  public var header: MessageHeader
  public var body: [UInt8]
  public var fds: [OwnedFD]

  public init(header: MessageHeader, body: [UInt8], fds: [OwnedFD]) {
    self.header = header
    self.body = body
    self.fds = fds
  }
}

/// A decoded message and the descriptors it carried (owned: dropping them closes them).
public struct Received<Code: VhostRequestCode>: Sendable {
  public var message: Message<Code>
  public var fds: [OwnedFD]
}

/// vhost-user messages over a Unix socket: one sendmsg per message with its descriptors on the
/// first byte, and receives that validate the header before reading the body.
public final class MessageChannel: Sendable {
  public let socket: UnixSocket
  /// How long a reply (or any part of a message once started) may take.
  public let timeoutMilliseconds: Int

  public init(socket: UnixSocket, timeoutMilliseconds: Int = 5000) {
    self.socket = socket
    self.timeoutMilliseconds = timeoutMilliseconds
  }

  /// Sends `message` with `fds` attached, waiting for room up to `timeoutMilliseconds` (nil: the
  /// channel's timeout).
  public func send<Code>(_ message: Message<Code>, fds: [OwnedFD] = [], timeoutMilliseconds: Int? = nil)
    throws(ChannelError)
  {
    do {
      try socket.send(
        message.encoded(), fds: fds.map(\.rawValue),
        timeoutMilliseconds: Int32(clamping: timeoutMilliseconds ?? self.timeoutMilliseconds))
    } catch {
      throw .transport(error)
    }
    withExtendedLifetime(fds) {}
  }

  /// Sends raw bytes (tests and the tracer use this to forward or forge messages).
  public func sendRaw(_ bytes: [UInt8], fds: [OwnedFD] = []) throws(ChannelError) {
    do {
      try socket.send(bytes, fds: fds.map(\.rawValue), timeoutMilliseconds: Int32(clamping: timeoutMilliseconds))
    } catch {
      throw .transport(error)
    }
    withExtendedLifetime(fds) {}
  }

  /// Receives one message: header (size checked against the limit before the body is read), then
  /// the body. `waitMilliseconds` bounds the wait for the first byte (nil: the channel's timeout,
  /// -1: forever); the rest of the message must follow within the channel's timeout.
  public func receiveRaw(waitMilliseconds: Int? = nil) throws(ChannelError) -> RawMessage {
    do {
      // The wait for a message to begin may be unbounded; once its first byte is there, the rest
      // of the header and the body share one deadline (a peer that stops mid-header cannot hold
      // the thread any longer than one that stops mid-body).
      let first = waitMilliseconds ?? timeoutMilliseconds
      if first != timeoutMilliseconds {
        guard socket.fd.waitReadable(timeoutMilliseconds: first < 0 ? -1 : Int32(clamping: first)) else {
          throw ChannelError.transport(.timeout("message header"))
        }
      }
      let messageDeadline = Deadline.after(milliseconds: timeoutMilliseconds)
      let (headerBytes, headerFDs) = try socket.receive(
        count: MessageHeader.size, deadline: messageDeadline, what: "message header")
      let header: MessageHeader
      do {
        header = try MessageHeader.decode(headerBytes)
      } catch {
        throw ChannelError.malformed(error)
      }
      var fds = headerFDs
      var body: [UInt8] = []
      if header.size > 0 {
        let (b, more) = try socket.receive(count: Int(header.size), deadline: messageDeadline, what: "message body")
        body = b
        fds += more
      }
      return RawMessage(header: header, body: body, fds: fds)
    } catch let error as ChannelError {
      throw error
    } catch let error as TransportError {
      throw .transport(error)
    } catch {
      throw .transport(.protocolViolation("\(error)"))
    }
  }

  /// Receives a request of the given channel's code type. Descriptors its rule tolerates but
  /// ignores are closed here.
  public func receiveRequest<Code: VhostRequestCode>(_: Code.Type, waitMilliseconds: Int? = nil) throws(ChannelError)
    -> Received<Code>
  {
    let raw = try receiveRaw(waitMilliseconds: waitMilliseconds)
    return try Self.decodeRequest(raw, as: Code.self)
  }

  /// Decodes a raw request; a decoding error leaves the stream in sync (the body was consumed).
  public static func decodeRequest<Code: VhostRequestCode>(_ raw: RawMessage, as: Code.Type) throws(ChannelError)
    -> Received<Code>
  {
    do {
      let message = try Message<Code>.decodeRequest(header: raw.header, body: raw.body, fdCount: raw.fds.count)
      if case .ignored = message.code.requestFDs { return Received(message: message, fds: []) }
      return Received(message: message, fds: raw.fds)
    } catch {
      throw .malformed(error)
    }
  }

  /// Receives the reply to `request` and validates it as strictly as QEMU does: flags exactly
  /// REPLY|version, the same request code, the exact payload size, the allowed descriptors.
  public func receiveReply<Code: VhostRequestCode>(to request: Code) throws(ChannelError) -> Received<Code> {
    let raw = try receiveRaw()
    do {
      let message = try Message<Code>.decodeReply(
        to: request, header: raw.header, body: raw.body, fdCount: raw.fds.count)
      return Received(message: message, fds: raw.fds)
    } catch {
      throw .badReply(error)
    }
  }

  /// Sends a reply to `request` with `payload` (the back-end side; flags REPLY|version).
  public func reply<Code: VhostRequestCode>(to request: Code, payload: Payload, fds: [OwnedFD] = [])
    throws(ChannelError)
  {
    try send(Message(request, flags: [.reply, .version1], payload: payload), fds: fds)
  }
}
