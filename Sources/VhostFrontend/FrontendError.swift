import VhostProtocol
import VhostSystem
import VhostTransport

/// Why a front-end operation failed.
public enum FrontendError: Error, Sendable, CustomStringConvertible {
  /// Sending or receiving failed, or a reply was malformed (the connection should be dropped).
  case channel(ChannelError)
  /// The request needs a feature that was not negotiated; nothing was sent.
  case notNegotiated(request: String, feature: String)
  /// The back-end answered a REPLY_ACK (or status reply) with a non-zero value.
  case refused(request: String, status: UInt64)
  /// A reply was well-formed but its content is not acceptable.
  case invalidReply(request: String, reason: String)
  /// The caller asked for something the protocol cannot express.
  case invalidArgument(String)
  /// A local system call failed (eventfd, memfd, socketpair, ...).
  case system(SystemError)

  public var description: String {
    switch self {
    case .channel(let e): e.description
    case .notNegotiated(let r, let f): "\(r) not sent: \(f) was not negotiated with the back-end"
    case .refused(let r, let s): "back-end refused \(r) (status \(s))"
    case .invalidReply(let r, let why): "invalid reply to \(r): \(why)"
    case .invalidArgument(let s): s
    case .system(let e): e.description
    }
  }
}
