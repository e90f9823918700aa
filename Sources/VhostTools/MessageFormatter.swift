import VhostProtocol

/// Decodes the messages of one vhost-user connection for the tracer. It keeps what decoding needs
/// from earlier messages: the last request on each channel (a reply is decoded as the answer to
/// it), the acked ring layout (packed ring bases) and the device type (device feature names).
/// It never rejects anything: a message it cannot decode is shown with the error and its bytes.
public struct MessageFormatter: Sendable {
  /// The device type for naming device-specific feature bits: given, or inferred from the first
  /// GET_FEATURES reply.
  public private(set) var device: VirtioDeviceType?
  private let deviceGiven: Bool
  /// The last request the front-end sent on the main channel: code and flags.
  private var lastFrontendRequest: (code: UInt32, flags: UInt32)?
  /// The last request the back-end sent on the back-end channel.
  private var lastBackendRequest: (code: UInt32, flags: UInt32)?
  /// VIRTIO_F_RING_PACKED was acked with SET_FEATURES.
  private var packed = false

  public init(device: VirtioDeviceType? = nil) {
    self.device = device
    deviceGiven = device != nil
  }

  /// Decodes one message (`bytes` = the 12-byte header and the body) that travelled in `direction`
  /// with `fds` descriptors.
  public mutating func format(
    _ bytes: [UInt8], fds: Int, direction: TraceDirection, nanoseconds: UInt64 = 0, connection: Int = 1
  ) -> TraceMessage {
    guard bytes.count >= MessageHeader.size else {
      return TraceMessage(
        nanoseconds: nanoseconds, connection: connection, direction: direction, code: 0, request: "TRUNCATED",
        flags: [], size: 0, payload: [TraceField("raw", .bytes(bytes))], fds: fds, note: nil)
    }
    var r = ByteReader(Array(bytes.prefix(MessageHeader.size)))
    let code: UInt32 = (try? r.read()) ?? 0
    let flags: UInt32 = (try? r.read()) ?? 0
    let size: UInt32 = (try? r.read()) ?? 0
    let body = Array(bytes.dropFirst(MessageHeader.size))
    let isReply = flags & HeaderFlags.reply.rawValue != 0
    var note: String?
    let name: String
    let payload: [TraceField]
    if direction.isBackendChannel {
      let request = BackendRequest(rawValue: code)
      name = request.name
      if isReply {
        note = Self.mismatch(code, lastBackendRequest?.code, name: { BackendRequest(rawValue: $0).name })
        payload = backendReply(request, body)
      } else {
        lastBackendRequest = (code, flags)
        payload = backendRequest(request, body)
      }
    } else {
      let request = FrontendRequest(rawValue: code)
      name = request.name
      if isReply {
        note = Self.mismatch(code, lastFrontendRequest?.code, name: { FrontendRequest(rawValue: $0).name })
        payload = frontendReply(request, body)
      } else {
        lastFrontendRequest = (code, flags)
        payload = frontendRequest(request, body)
      }
    }
    return TraceMessage(
      nanoseconds: nanoseconds, connection: connection, direction: direction, code: code, request: name,
      flags: Self.flagNames(flags), size: size, payload: payload, fds: fds, note: note)
  }

  /// `REPLY`, `NEED_REPLY`; a version other than 1 and reserved bits are named too.
  public static func flagNames(_ raw: UInt32) -> [String] {
    var names: [String] = []
    let flags = HeaderFlags(rawValue: raw)
    if flags.version != 1 { names.append("VERSION_\(flags.version)") }
    if flags.contains(.reply) { names.append("REPLY") }
    if flags.contains(.needReply) { names.append("NEED_REPLY") }
    if flags.reservedBits != 0 { names.append("RESERVED_" + hexString(UInt64(flags.reservedBits))) }
    return names
  }

  private static func mismatch(_ code: UInt32, _ last: UInt32?, name: (UInt32) -> String) -> String? {
    guard let last else { return "reply without a request" }
    return last == code ? nil : "reply to \(name(code)), but the last request was \(name(last))"
  }

  // MARK: - Main channel

  private mutating func frontendRequest(_ request: FrontendRequest, _ body: [UInt8]) -> [TraceField] {
    let payload: Payload
    do {
      payload = try Payload.decode(body, as: request.requestLayout, request: request.name)
    } catch {
      return Self.undecodable(error, body)
    }
    switch (request, payload) {
    case (.setFeatures, .u64(let v)):
      packed = VirtioFeatures(rawValue: v).contains(.ringPacked)
      if device == nil { device = Self.inferDevice(v) }
      return [TraceField("features", virtioBits(v))]
    case (.setProtocolFeatures, .u64(let v)):
      return [TraceField("protocol_features", Self.protocolBits(v))]
    case (.setVringKick, .u64(let v)), (.setVringCall, .u64(let v)), (.setVringErr, .u64(let v)):
      var fields = [
        TraceField("index", .number(v & Limits.vringIndexMask)),
        TraceField("nofd", .bool(v & Limits.vringNoFDMask != 0)),
      ]
      if v & ~(Limits.vringIndexMask | Limits.vringNoFDMask) != 0 { fields.append(TraceField("value", .hex(v))) }
      return fields
    case (.sendRARP, .u64(let v)):
      let mac = (0..<6).map { i in hexBytes([UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))]) }
      return [TraceField("mac", .string(mac.joined(separator: ":")))]
    case (.netSetMTU, .u64(let v)): return [TraceField("mtu", .number(v))]
    case (.setStatus, .u64(let v)): return [TraceField("status", Self.statusBits(v))]
    case (.closeCryptoSession, .u64(let v)): return [TraceField("session", .number(v))]
    case (.setVringNum, .vringState(let s)):
      return [TraceField("index", .number(UInt64(s.index))), TraceField("num", .number(UInt64(s.num)))]
    case (.setVringBase, .vringState(let s)):
      return [TraceField("index", .number(UInt64(s.index)))] + base(s.num, sentAvailOnly: true)
    case (.getVringBase, .vringState(let s)), (.getVringBaseSkipDrain, .vringState(let s)):
      return [TraceField("index", .number(UInt64(s.index)))]
    case (.setVringEnable, .vringState(let s)):
      return [TraceField("index", .number(UInt64(s.index))), TraceField("enable", .number(UInt64(s.num)))]
    case (.setVringEndian, .vringState(let s)):
      let endian = s.num == 0 ? "little" : s.num == 1 ? "big" : String(s.num)
      return [TraceField("index", .number(UInt64(s.index))), TraceField("endian", .string(endian))]
    default:
      return Self.fields(payload)
    }
  }

  private mutating func frontendReply(_ request: FrontendRequest, _ body: [UInt8]) -> [TraceField] {
    guard let layout = request.replyLayout else {
      // No reply of its own: a REPLY_ACK. (With POSTCOPY, QEMU's SET_MEM_TABLE is answered with the
      // back-end's memory table instead.)
      if request == .setMemTable && body.count > 8,
        let table = try? Payload.decode(body, as: .memoryTable, request: request.name)
      {
        return Self.fields(table)
      }
      guard body.count == 8, let v = try? Payload.decode(body, as: .u64, request: request.name).u64Value else {
        return Self.undecodable(.wrongPayloadSize(request: request.name, expected: "8", actual: body.count), body)
      }
      return [TraceField("ack", .number(v))]
    }
    let payload: Payload
    do {
      payload = try Payload.decode(body, as: layout, request: request.name)
    } catch {
      return Self.undecodable(error, body)
    }
    switch (request, payload) {
    case (.getFeatures, .u64(let v)):
      if device == nil { device = Self.inferDevice(v) }
      return [TraceField("features", virtioBits(v))]
    case (.getProtocolFeatures, .u64(let v)): return [TraceField("protocol_features", Self.protocolBits(v))]
    case (.getQueueNum, .u64(let v)): return [TraceField("queues", .number(v))]
    case (.getMaxMemSlots, .u64(let v)): return [TraceField("slots", .number(v))]
    case (.getStatus, .u64(let v)): return [TraceField("status", Self.statusBits(v))]
    case (.getVringBase, .vringState(let s)), (.getVringBaseSkipDrain, .vringState(let s)):
      return [TraceField("index", .number(UInt64(s.index)))] + base(s.num, sentAvailOnly: false)
    default:
      return Self.fields(payload)
    }
  }

  // MARK: - Back-end channel

  private func backendRequest(_ request: BackendRequest, _ body: [UInt8]) -> [TraceField] {
    do {
      return Self.fields(try Payload.decode(body, as: request.requestLayout, request: request.name))
    } catch {
      return Self.undecodable(error, body)
    }
  }

  private func backendReply(_ request: BackendRequest, _ body: [UInt8]) -> [TraceField] {
    let layout = request.replyLayout ?? .u64
    let payload: Payload
    do {
      payload = try Payload.decode(body, as: layout, request: request.name)
    } catch {
      return Self.undecodable(error, body)
    }
    if request.replyLayout == nil, let v = payload.u64Value { return [TraceField("ack", .number(v))] }
    return Self.fields(payload)
  }

  // MARK: - Field builders

  private func virtioBits(_ v: UInt64) -> TraceValue { .bits(v, VirtioFeatures(rawValue: v).names(for: device)) }

  private static func protocolBits(_ v: UInt64) -> TraceValue { .bits(v, ProtocolFeatures(rawValue: v).names) }

  private static let statusNames: [UInt64: String] = [
    1: "ACKNOWLEDGE", 2: "DRIVER", 4: "DRIVER_OK", 8: "FEATURES_OK", 64: "DEVICE_NEEDS_RESET", 128: "FAILED",
  ]

  private static func statusBits(_ v: UInt64) -> TraceValue {
    .bits(
      v,
      (0..<64).compactMap { bit in
        let mask: UInt64 = 1 << UInt64(bit)
        guard v & mask != 0 else { return nil }
        return statusNames[mask] ?? "bit \(bit)"
      })
  }

  /// A vring base; for packed rings also its avail/used indices and wrap counters.
  private func base(_ num: UInt32, sentAvailOnly: Bool) -> [TraceField] {
    var fields = [TraceField("base", .number(UInt64(num)))]
    if packed {
      let b = VringBase(num: num, packed: true)
      fields.append(TraceField("avail_idx", .number(UInt64(b.availIndex))))
      fields.append(TraceField("avail_wrap", .bool(b.availWrap)))
      if !sentAvailOnly || num >> 16 != 0 {
        fields.append(TraceField("used_idx", .number(UInt64(b.usedIndex))))
        fields.append(TraceField("used_wrap", .bool(b.usedWrap)))
      }
    }
    return fields
  }

  /// The device type the offered features imply (see `VirtioDeviceType.init(inferringFrom:)`).
  static func inferDevice(_ features: UInt64) -> VirtioDeviceType? {
    VirtioDeviceType(inferringFrom: VirtioFeatures(rawValue: features))
  }

  private static func undecodable(_ error: ProtocolError, _ body: [UInt8]) -> [TraceField] {
    [TraceField("error", .string(error.description)), TraceField("raw", .bytes(body))]
  }

  private static func region(_ r: MemoryRegion) -> [TraceField] {
    [
      TraceField("gpa", .hex(r.guestPhysAddr)), TraceField("size", .hex(r.memorySize)),
      TraceField("uva", .hex(r.userAddr)), TraceField("offset", .hex(r.mmapOffset)),
    ]
  }

  private static func uuid(_ bytes: [UInt8]) -> String {
    let h = hexBytes(bytes)
    guard h.count == 32 else { return h }
    let c = Array(h)
    return [c[0..<8], c[8..<12], c[12..<16], c[16..<20], c[20..<32]].map { String($0) }.joined(separator: "-")
  }

  /// The fields of a payload, named after the spec's struct members.
  static func fields(_ payload: Payload) -> [TraceField] {
    switch payload {
    case .empty: return []
    case .u64(let v): return [TraceField("value", .number(v))]
    case .vringState(let s):
      return [TraceField("index", .number(UInt64(s.index))), TraceField("num", .number(UInt64(s.num)))]
    case .vringAddress(let a):
      return [
        TraceField("index", .number(UInt64(a.index))),
        TraceField("flags", .bits(UInt64(a.flags), a.flags & VringAddress.flagLog != 0 ? ["LOG"] : [])),
        TraceField("desc", .hex(a.descUserAddr)), TraceField("used", .hex(a.usedUserAddr)),
        TraceField("avail", .hex(a.availUserAddr)), TraceField("log", .hex(a.logGuestAddr)),
      ]
    case .memoryTable(let t):
      return [
        TraceField("nregions", .number(UInt64(t.regions.count))),
        TraceField("regions", .list(t.regions.map { .object(region($0)) })),
      ]
    case .singleRegion(let r): return region(r.region)
    case .log(let l): return [TraceField("mmap_size", .hex(l.mmapSize)), TraceField("mmap_offset", .hex(l.mmapOffset))]
    case .iotlb(let m):
      let kinds = [1: "miss", 2: "update", 3: "invalidate", 4: "access_fail"]
      let perms = ["none", "ro", "wo", "rw"]
      return [
        TraceField("iova", .hex(m.iova)), TraceField("size", .hex(m.size)), TraceField("uva", .hex(m.userAddr)),
        TraceField("perm", .string(m.permissions < 4 ? perms[Int(m.permissions)] : String(m.permissions))),
        TraceField("type", .string(kinds[Int(m.type)] ?? String(m.type))),
      ]
    case .config(let c):
      return [
        TraceField("offset", .number(UInt64(c.offset))), TraceField("size", .number(UInt64(c.bytes.count))),
        TraceField("flags", .hex(UInt64(c.flags))), TraceField("bytes", .bytes(c.bytes)),
      ]
    case .vringArea(let a):
      return [
        TraceField("index", .number(a.indexAndFlags & Limits.vringIndexMask)),
        TraceField("nofd", .bool(a.indexAndFlags & VringArea.noFDFlag != 0)),
        TraceField("size", .hex(a.size)), TraceField("offset", .hex(a.offset)),
      ]
    case .inflight(let i):
      return [
        TraceField("mmap_size", .hex(i.mmapSize)), TraceField("mmap_offset", .hex(i.mmapOffset)),
        TraceField("num_queues", .number(UInt64(i.numQueues))), TraceField("queue_size", .number(UInt64(i.queueSize))),
      ]
    case .sharedObject(let o): return [TraceField("uuid", .string(uuid(o.uuid)))]
    case .deviceStateTransfer(let d):
      let direction = d.direction == 0 ? "save" : d.direction == 1 ? "load" : String(d.direction)
      return [TraceField("direction", .string(direction)), TraceField("phase", .number(UInt64(d.phase)))]
    case .shmemMap(let m):
      return [
        TraceField("shmid", .number(UInt64(m.shmid))), TraceField("fd_offset", .hex(m.fdOffset)),
        TraceField("shm_offset", .hex(m.shmOffset)), TraceField("len", .hex(m.length)),
        TraceField("flags", .hex(m.flags)),
      ]
    case .shmemConfig(let c):
      let n = min(Int(c.nregions), c.memorySizes.count)
      return [
        TraceField("nregions", .number(UInt64(c.nregions))),
        TraceField("sizes", .list(c.memorySizes.prefix(n).map { .hex($0) })),
      ]
    case .opaque(let b): return [TraceField("bytes", .bytes(b))]
    }
  }
}
