import VhostProtocol

/// Which way a message went, and on which channel.
public enum TraceDirection: String, Sendable, Hashable, CaseIterable {
  /// A front-end request (or, unusually, reply) on the main channel.
  case frontToBack = "F→B"
  /// A back-end reply on the main channel.
  case backToFront = "B→F"
  /// A back-end request on the back-end channel (SET_BACKEND_REQ_FD).
  case backendChannelBackToFront = "BC B→F"
  /// A front-end reply on the back-end channel.
  case backendChannelFrontToBack = "BC F→B"

  /// Whether this is the back-end channel (codes are `VHOST_USER_BACKEND_*`).
  public var isBackendChannel: Bool { self == .backendChannelBackToFront || self == .backendChannelFrontToBack }
}

/// A decoded value in a message's payload.
public indirect enum TraceValue: Sendable, Hashable {
  /// A count, index or size: decimal in text and JSON.
  case number(UInt64)
  /// An address, offset or bit mask: hex in text, a number in JSON.
  case hex(UInt64)
  case bool(Bool)
  case string(String)
  /// Raw bytes: a hex string in text and JSON.
  case bytes([UInt8])
  /// A bit mask with the names of its set bits: `0x… (A|B)` in text, `{"value":…,"names":[…]}` in JSON.
  case bits(UInt64, [String])
  case list([TraceValue])
  case object([TraceField])

  /// The text rendering.
  public var text: String {
    switch self {
    case .number(let v): String(v)
    case .hex(let v): hexString(v)
    case .bool(let b): b ? "true" : "false"
    case .string(let s): s
    case .bytes(let b): b.isEmpty ? "-" : hexBytes(b)
    case .bits(let v, let names):
      names.isEmpty ? hexString(v) : hexString(v) + " (" + names.joined(separator: "|") + ")"
    case .list(let items): "[" + items.map(\.text).joined(separator: ", ") + "]"
    case .object(let fields): "{" + fields.map(\.text).joined(separator: " ") + "}"
    }
  }

  /// The JSON rendering.
  public var json: String {
    switch self {
    case .number(let v), .hex(let v): String(v)
    case .bool(let b): b ? "true" : "false"
    case .string(let s): jsonString(s)
    case .bytes(let b): jsonString(hexBytes(b))
    case .bits(let v, let names):
      "{\"value\":\(v),\"names\":[" + names.map(jsonString).joined(separator: ",") + "]}"
    case .list(let items): "[" + items.map(\.json).joined(separator: ",") + "]"
    case .object(let fields): jsonObject(fields)
    }
  }
}

/// One named value of a payload.
public struct TraceField: Sendable, Hashable {
  public var name: String
  public var value: TraceValue

  public init(_ name: String, _ value: TraceValue) {
    self.name = name
    self.value = value
  }

  /// `name=value`.
  public var text: String { name + "=" + value.text }
}

/// One relayed message, decoded.
public struct TraceMessage: Sendable, Hashable {
  /// Monotonic nanoseconds since the tracer started.
  public var nanoseconds: UInt64
  /// The front-end connection (1, 2, … in accept order).
  public var connection: Int
  public var direction: TraceDirection
  /// The request code in the header.
  public var code: UInt32
  /// The request's name (`GET_FEATURES`, `BACKEND_CONFIG_CHANGE_MSG`, `UNKNOWN(99)`).
  public var request: String
  /// `REPLY`, `NEED_REPLY`, and anything irregular (`VERSION_2`, `RESERVED_0x10`).
  public var flags: [String]
  /// The body size the header announced.
  public var size: UInt32
  public var payload: [TraceField]
  /// Descriptors that came with the message.
  public var fds: Int
  /// What the tracer noticed or did (a tapped back-end channel, a reply to another request).
  public var note: String?

  public var isReply: Bool { flags.contains("REPLY") }

  /// The payload field called `name`, if any.
  public func field(_ name: String) -> TraceValue? { payload.first { $0.name == name }?.value }

  /// One line: time, connection, direction, request, flags, payload, fds.
  public var text: String {
    var line = seconds(nanoseconds) + " #\(connection) " + direction.rawValue.padding(to: 6) + " " + request
    if !flags.isEmpty { line += " [" + flags.joined(separator: ",") + "]" }
    for f in payload { line += " " + f.text }
    line += " fds=\(fds)"
    if let note { line += " (\(note))" }
    return line
  }

  /// One JSON object: `{"t":…,"conn":…,"dir":…,"request":…,"code":…,"flags":[…],"size":…,"payload":{…},"fds":n}`.
  public var json: String {
    var s = "{\"t\":" + seconds(nanoseconds) + ",\"conn\":\(connection),\"dir\":" + jsonString(direction.rawValue)
    s += ",\"request\":" + jsonString(request) + ",\"code\":\(code)"
    s += ",\"flags\":[" + flags.map(jsonString).joined(separator: ",") + "]"
    s += ",\"size\":\(size),\"payload\":" + jsonObject(payload) + ",\"fds\":\(fds)"
    if let note { s += ",\"note\":" + jsonString(note) }
    return s + "}"
  }
}

/// Something that happened to a connection (not a message): connected, closed, a relay error.
public struct TraceNotice: Sendable, Hashable {
  public var nanoseconds: UInt64
  public var connection: Int
  /// `connected`, `closed`, `error`, `backend-channel-closed`, `listening`.
  public var event: String
  public var detail: String

  public var text: String {
    seconds(nanoseconds) + " #\(connection) " + "---".padding(to: 6) + " " + event + ": " + detail
  }

  public var json: String {
    "{\"t\":" + seconds(nanoseconds) + ",\"conn\":\(connection),\"event\":" + jsonString(event) + ",\"detail\":"
      + jsonString(detail) + "}"
  }
}

/// What the tracer reports: a message or a notice.
public enum TraceEvent: Sendable, Hashable {
  case message(TraceMessage)
  case notice(TraceNotice)

  public var text: String {
    switch self {
    case .message(let m): m.text
    case .notice(let n): n.text
    }
  }

  public var json: String {
    switch self {
    case .message(let m): m.json
    case .notice(let n): n.json
    }
  }

  public var message: TraceMessage? {
    if case .message(let m) = self { return m }
    return nil
  }
}

// MARK: - Rendering helpers

func hexString(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

func hexBytes(_ bytes: [UInt8]) -> String {
  let digits = Array("0123456789abcdef".utf8)
  var out: [UInt8] = []
  out.reserveCapacity(bytes.count * 2)
  for b in bytes {
    out.append(digits[Int(b >> 4)])
    out.append(digits[Int(b & 0xf)])
  }
  return String(decoding: out, as: UTF8.self)
}

/// Seconds with six decimals (microseconds), e.g. `12.000345`.
func seconds(_ nanoseconds: UInt64) -> String {
  let micros = nanoseconds / 1000
  let fraction = String(micros % 1_000_000)
  return String(micros / 1_000_000) + "." + String(repeating: "0", count: 6 - fraction.count) + fraction
}

func jsonObject(_ fields: [TraceField]) -> String {
  "{" + fields.map { jsonString($0.name) + ":" + $0.value.json }.joined(separator: ",") + "}"
}

extension String {
  /// Pads with spaces on the right to `width` characters.
  fileprivate func padding(to width: Int) -> String {
    count >= width ? self : self + String(repeating: " ", count: width - count)
  }
}
