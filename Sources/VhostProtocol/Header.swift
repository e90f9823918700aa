/// The flags word of a message header.
public struct HeaderFlags: OptionSet, Hashable, Sendable {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  /// Protocol version 1 in bits 0–1.
  public static let version1 = Self(rawValue: 0x1)
  /// Set on every reply.
  public static let reply = Self(rawValue: 0x4)
  /// Asks for a REPLY_ACK u64 (when REPLY_ACK is negotiated).
  public static let needReply = Self(rawValue: 0x8)

  public static let versionMask: UInt32 = 0x3
  public static let knownMask: UInt32 = 0xf

  public var version: UInt32 { rawValue & Self.versionMask }
  /// Bits the specification reserves (must be zero).
  public var reservedBits: UInt32 { rawValue & ~Self.knownMask }
}

/// The 12-byte header that starts every message: request, flags, size.
public struct MessageHeader: Hashable, Sendable {
  public static let size = 12

  public var request: UInt32
  public var flags: HeaderFlags
  public var size: UInt32

  public init(request: UInt32, flags: HeaderFlags, size: UInt32) {
    self.request = request
    self.flags = flags
    self.size = size
  }

  public func encoded() -> [UInt8] {
    var w = ByteWriter(capacity: Self.size)
    w.write(request)
    w.write(flags.rawValue)
    w.write(size)
    return w.bytes
  }

  /// Decodes and validates a header: version 1, no reserved bits, body no larger than
  /// `maxPayload` (checked before any body byte is read).
  public static func decode(_ bytes: [UInt8], maxPayload: Int = Limits.maxPayloadSize) throws(ProtocolError)
    -> MessageHeader
  {
    guard bytes.count == size else { throw .truncated(needed: size, available: bytes.count) }
    var r = ByteReader(bytes)
    let request: UInt32 = try r.read()
    let flags = HeaderFlags(rawValue: try r.read())
    let bodySize: UInt32 = try r.read()
    guard flags.version == 1 else { throw .badVersion(flags.version) }
    guard flags.reservedBits == 0 else { throw .reservedFlags(flags.rawValue) }
    guard Int(bodySize) <= maxPayload else { throw .oversize(size: bodySize, limit: maxPayload) }
    return MessageHeader(request: request, flags: flags, size: bodySize)
  }
}

/// Why a byte string is not a valid vhost-user message.
public enum ProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
  case truncated(needed: Int, available: Int)
  case badVersion(UInt32)
  case reservedFlags(UInt32)
  case oversize(size: UInt32, limit: Int)
  case wrongPayloadSize(request: String, expected: String, actual: Int)
  case wrongFDCount(request: String, expected: String, actual: Int)
  case invalidField(request: String, field: String, value: UInt64)

  public var description: String {
    switch self {
    case .truncated(let needed, let available): "message truncated: need \(needed) bytes, have \(available)"
    case .badVersion(let v): "unsupported protocol version \(v) (expected 1)"
    case .reservedFlags(let f): "reserved header flag bits set: flags=0x\(String(f, radix: 16))"
    case .oversize(let size, let limit): "payload size \(size) exceeds the limit of \(limit) bytes"
    case .wrongPayloadSize(let request, let expected, let actual):
      "\(request): payload is \(actual) bytes, expected \(expected)"
    case .wrongFDCount(let request, let expected, let actual):
      "\(request): carries \(actual) file descriptor(s), expected \(expected)"
    case .invalidField(let request, let field, let value): "\(request): invalid \(field) \(value)"
    }
  }
}
