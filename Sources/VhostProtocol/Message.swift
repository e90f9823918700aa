/// A decoded message body.
public enum Payload: Hashable, Sendable {
  case empty
  case u64(UInt64)
  case vringState(VringState)
  case vringAddress(VringAddress)
  case memoryTable(MemoryTable)
  case singleRegion(SingleMemoryRegion)
  case log(LogDescription)
  case iotlb(IOTLBMessage)
  case config(ConfigSpace)
  case vringArea(VringArea)
  case inflight(InflightDescription)
  case sharedObject(SharedObject)
  case deviceStateTransfer(DeviceStateTransfer)
  case shmemMap(ShmemMapRequest)
  case shmemConfig(ShmemConfig)
  case opaque([UInt8])

  /// Encodes the body bytes.
  public func encoded() -> [UInt8] {
    var w = ByteWriter()
    switch self {
    case .empty: break
    case .u64(let v): w.write(v)
    case .vringState(let p): p.encode(into: &w)
    case .vringAddress(let p): p.encode(into: &w)
    case .memoryTable(let p): p.encode(into: &w)
    case .singleRegion(let p): p.encode(into: &w)
    case .log(let p): p.encode(into: &w)
    case .iotlb(let p): p.encode(into: &w)
    case .config(let p): p.encode(into: &w)
    case .vringArea(let p): p.encode(into: &w)
    case .inflight(let p): p.encode(into: &w)
    case .sharedObject(let p): p.encode(into: &w)
    case .deviceStateTransfer(let p): p.encode(into: &w)
    case .shmemMap(let p): p.encode(into: &w)
    case .shmemConfig(let p): p.encode(into: &w)
    case .opaque(let b): w.write(bytes: b)
    }
    return w.bytes
  }

  /// Decodes `body` as `layout`; the size must match exactly.
  public static func decode(_ body: [UInt8], as layout: PayloadLayout, request: String) throws(ProtocolError)
    -> Payload
  {
    if let fixed = layout.fixedSize, body.count != fixed {
      throw .wrongPayloadSize(request: request, expected: "\(fixed)", actual: body.count)
    }
    var r = ByteReader(body)
    switch layout {
    case .empty: return .empty
    case .u64: return .u64(try r.read())
    case .u64OrEmpty:
      switch body.count {
      case 0: return .empty
      case 8: return .u64(try r.read())
      default: throw .wrongPayloadSize(request: request, expected: "0 or 8", actual: body.count)
      }
    case .vringState: return .vringState(try VringState(from: &r))
    case .vringAddress: return .vringAddress(try VringAddress(from: &r))
    case .memoryTable: return .memoryTable(try MemoryTable(from: &r))
    case .singleRegion: return .singleRegion(try SingleMemoryRegion(from: &r))
    case .log: return .log(try LogDescription(from: &r))
    case .iotlb: return .iotlb(try IOTLBMessage(from: &r))
    case .config:
      guard body.count >= ConfigSpace.headerSize else {
        throw .wrongPayloadSize(request: request, expected: "at least 12", actual: body.count)
      }
      return .config(try ConfigSpace(from: &r))
    case .vringArea: return .vringArea(try VringArea(from: &r))
    case .inflight: return .inflight(try InflightDescription(from: &r))
    case .sharedObject: return .sharedObject(try SharedObject(from: &r))
    case .deviceStateTransfer: return .deviceStateTransfer(try DeviceStateTransfer(from: &r))
    case .shmemMap: return .shmemMap(try ShmemMapRequest(from: &r))
    case .shmemConfig: return .shmemConfig(try ShmemConfig(from: &r))
    case .opaque: return .opaque(body)
    }
  }

  /// The u64 value, if this is a u64 body.
  public var u64Value: UInt64? {
    if case .u64(let v) = self { return v }
    return nil
  }
}

/// A vhost-user message on either channel: request code, flags and body. File descriptors travel
/// beside it (see the transport).
public struct Message<Code: VhostRequestCode>: Hashable, Sendable {
  public var code: Code
  public var flags: HeaderFlags
  public var payload: Payload

  public init(_ code: Code, flags: HeaderFlags = .version1, payload: Payload = .empty) {
    self.code = code
    self.flags = flags.union(.version1)
    self.payload = payload
  }

  public var isReply: Bool { flags.contains(.reply) }
  public var needsReply: Bool { flags.contains(.needReply) }

  /// Header and body as one byte string.
  public func encoded() -> [UInt8] {
    let body = payload.encoded()
    // bounded: encode() is only called with bodies the payload coder built (at most Limits.maxMessageBody)
    return MessageHeader(request: code.rawValue, flags: flags, size: UInt32(truncatingIfNeeded: body.count)).encoded()
      + body
  }

  /// Decodes a request's body (header already validated) and checks its descriptor count.
  /// Unknown codes decode with an opaque body; the receiver decides what to do with them.
  public static func decodeRequest(header: MessageHeader, body: [UInt8], fdCount: Int) throws(ProtocolError)
    -> Message
  {
    let code = Code(rawValue: header.request)
    let payload = try Payload.decode(body, as: code.requestLayout, request: code.name)
    try checkFDs(code.requestFDs, payload: payload, count: fdCount, request: code.name)
    return Message(code, flags: header.flags, payload: payload)
  }

  /// Decodes a reply to `request`. `ack` selects the REPLY_ACK u64 layout for requests without an
  /// explicit reply. Flags must be exactly REPLY|version 1, and the code must match.
  public static func decodeReply(to request: Code, header: MessageHeader, body: [UInt8], fdCount: Int)
    throws(ReplyError) -> Message
  {
    let expectedFlags: HeaderFlags = [.reply, .version1]
    guard header.flags == expectedFlags else { throw .badFlags(header.flags.rawValue) }
    guard header.request == request.rawValue else {
      throw .wrongRequest(expected: request.name, got: Code(rawValue: header.request).name)
    }
    let layout = request.replyLayout ?? .u64
    do {
      let payload = try Payload.decode(body, as: layout, request: request.name)
      let fdRule = request.replyLayout == nil ? FDRule.none : request.replyFDs
      try checkFDs(fdRule, payload: payload, count: fdCount, request: request.name)
      return Message(request, flags: header.flags, payload: payload)
    } catch {
      throw .malformed(error)
    }
  }

  static func checkFDs(_ rule: FDRule, payload: Payload, count: Int, request: String) throws(ProtocolError) {
    let ok: Bool
    let expected: String
    switch rule {
    case .none:
      ok = count == 0
      expected = "0"
    case .exactly(let n):
      ok = count == n
      expected = "\(n)"
    case .upTo(let n), .ignored(let n):
      ok = count <= n
      expected = "at most \(n)"
    case .onePerRegion:
      let n: Int
      if case .memoryTable(let t) = payload { n = t.regions.count } else { n = 0 }
      ok = count == n
      expected = "\(n) (one per region)"
    case .vringFile:
      let noFD = (payload.u64Value ?? 0) & Limits.vringNoFDMask != 0
      ok = count == (noFD ? 0 : 1)
      expected = noFD ? "0 (NOFD bit set)" : "1"
    }
    guard ok else { throw .wrongFDCount(request: request, expected: expected, actual: count) }
  }
}

/// Why a reply was refused.
public enum ReplyError: Error, Hashable, Sendable, CustomStringConvertible {
  case badFlags(UInt32)
  case wrongRequest(expected: String, got: String)
  case malformed(ProtocolError)
  /// A REPLY_ACK carried a non-zero status.
  case nack(request: String, status: UInt64)

  public var description: String {
    switch self {
    case .badFlags(let f): "reply has flags 0x\(String(f, radix: 16)), expected 0x5 (REPLY | version 1)"
    case .wrongRequest(let e, let g): "reply is for \(g), expected a reply to \(e)"
    case .malformed(let e): "malformed reply: \(e)"
    case .nack(let r, let s): "back-end refused \(r) (REPLY_ACK status \(s))"
    }
  }
}

public typealias FrontendMessage = Message<FrontendRequest>
public typealias BackendMessage = Message<BackendRequest>
