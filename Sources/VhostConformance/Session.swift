import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTransport
import Virtqueue

/// Why a step of a check failed: a deviation observed on the wire, or a transport failure.
struct CheckFailure: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}

/// One front-end connection driven message by message, so every reply can be checked exactly:
/// header flags, request code, size and descriptors. Requests without a reply of their own carry
/// NEED_REPLY once REPLY_ACK is negotiated (as QEMU and Cloud Hypervisor do), so a refusal shows.
final class Session {
  let channel: MessageChannel
  let timeout: Int
  /// GET_FEATURES answer.
  var offered: VirtioFeatures = []
  /// GET_PROTOCOL_FEATURES answer (empty without bit 30).
  var protocolOffer: ProtocolFeatures = []
  /// SET_PROTOCOL_FEATURES value.
  var protocolAcked: ProtocolFeatures = []
  /// SET_FEATURES value.
  var acked: VirtioFeatures = []
  var queueNum: UInt64?
  var memSlots: UInt64?
  /// The last request sent (for messages).
  private var lastSent = "nothing"

  /// Protocol features the checker knows how to use.
  static let supportedProtocolFeatures: ProtocolFeatures = [
    .mq, .replyAck, .mtu, .backendReq, .config, .configureMemSlots, .status,
  ]

  init(socket: UnixSocket, timeout: Int) {
    ignoreSIGPIPE()
    channel = MessageChannel(socket: socket, timeoutMilliseconds: timeout)
    self.timeout = timeout
  }

  static func open(_ path: String, timeout: Int) throws(CheckFailure) -> Session {
    do {
      return Session(socket: try UnixSocket.connect(to: path, retryingFor: timeout), timeout: timeout)
    } catch {
      throw CheckFailure("cannot connect to \(path): \(error)")
    }
  }

  func close() { channel.socket.shutdown() }

  var bit30: Bool { offered.contains(.protocolFeatures) }
  var replyAck: Bool { protocolAcked.contains(.replyAck) }

  // MARK: Raw traffic

  /// Sends `code` with exactly the given flags.
  func send(
    _ code: FrontendRequest, payload: Payload = .empty, fds: [OwnedFD] = [], flags: HeaderFlags = .version1
  ) throws(CheckFailure) {
    lastSent = code.name
    do {
      try channel.send(Message(code, flags: flags, payload: payload), fds: fds)
    } catch {
      throw CheckFailure("sending \(code.name) failed: \(error)")
    }
  }

  func sendRaw(_ bytes: [UInt8], fds: [OwnedFD] = [], what: String) throws(CheckFailure) {
    lastSent = what
    do {
      try channel.sendRaw(bytes, fds: fds)
    } catch {
      throw CheckFailure("sending \(what) failed: \(error)")
    }
  }

  /// The next message from the back-end (header validated: version 1, no reserved bits, size ≤ 4096).
  func receive(waitMilliseconds: Int? = nil) throws(CheckFailure) -> RawMessage {
    do {
      return try channel.receiveRaw(waitMilliseconds: waitMilliseconds)
    } catch {
      throw CheckFailure("no valid reply after \(lastSent): \(error)")
    }
  }

  /// Checks that `raw` is a reply to `code`: flags exactly REPLY|version 1, the same request code,
  /// `size` bytes (if given) and no descriptors (unless allowed).
  static func validate(_ raw: RawMessage, replyTo code: FrontendRequest, size: Int?, fds allowed: Int = 0)
    -> String?
  {
    var problems: [String] = []
    if raw.header.request != code.rawValue {
      problems.append("request code \(FrontendRequest(rawValue: raw.header.request).name), expected \(code.name)")
    }
    if raw.header.flags.rawValue != 0x5 {
      problems.append("flags \(hex(raw.header.flags.rawValue)), expected exactly 0x5 (REPLY | version 1)")
    }
    if let size, raw.body.count != size { problems.append("payload size \(raw.body.count), expected \(size)") }
    if raw.fds.count > allowed { problems.append("\(raw.fds.count) file descriptor(s) attached") }
    return problems.isEmpty ? nil : problems.joined(separator: "; ")
  }

  /// Sends a request with an explicit reply and returns the validated reply.
  func call(
    _ code: FrontendRequest, payload: Payload = .empty, fds: [OwnedFD] = [], replySize: Int?,
    flags: HeaderFlags = .version1
  ) throws(CheckFailure) -> RawMessage {
    try send(code, payload: payload, fds: fds, flags: flags)
    let raw = try receive()
    if let problem = Self.validate(raw, replyTo: code, size: replySize) {
      throw CheckFailure("reply to \(code.name): \(problem)")
    }
    return raw
  }

  func u64(_ code: FrontendRequest) throws(CheckFailure) -> UInt64 {
    let raw = try call(code, replySize: 8)
    return Self.u64(raw.body)
  }

  static func u64(_ body: [UInt8]) -> UInt64 {
    var r = ByteReader(body)
    return (try? r.read(UInt64.self)) ?? 0
  }

  /// Sends a request without a reply of its own; with REPLY_ACK negotiated (and `ack` not false)
  /// it carries NEED_REPLY and the validated REPLY_ACK status is returned.
  @discardableResult
  func command(_ code: FrontendRequest, payload: Payload = .empty, fds: [OwnedFD] = [], ack: Bool? = nil)
    throws(CheckFailure) -> UInt64?
  {
    let wantAck = ack ?? replyAck
    try send(code, payload: payload, fds: fds, flags: wantAck ? [.version1, .needReply] : .version1)
    guard wantAck else { return nil }
    let raw = try receive()
    if let problem = Self.validate(raw, replyTo: code, size: 8) {
      throw CheckFailure("REPLY_ACK for \(code.name): \(problem)")
    }
    return Self.u64(raw.body)
  }

  /// `command` that must succeed (REPLY_ACK status 0 when negotiated).
  func must(_ code: FrontendRequest, payload: Payload = .empty, fds: [OwnedFD] = []) throws(CheckFailure) {
    if let status = try command(code, payload: payload, fds: fds), status != 0 {
      throw CheckFailure("back-end refused \(code.name) (REPLY_ACK status \(status))")
    }
  }

  /// Confirms the connection is in step: GET_FEATURES is answered next, with the same features.
  func sync() throws(CheckFailure) {
    let raw = try call(.getFeatures, replySize: 8)
    if !offered.isEmpty, Self.u64(raw.body) != offered.rawValue {
      throw CheckFailure("GET_FEATURES now answers \(hex(Self.u64(raw.body))), first \(hex(offered.rawValue))")
    }
  }

  // MARK: Standard bring-up

  /// GET_FEATURES; with bit 30 GET_PROTOCOL_FEATURES and SET_PROTOCOL_FEATURES (offer ∩ ours);
  /// GET_QUEUE_NUM with MQ; GET_MAX_MEM_SLOTS with CONFIGURE_MEM_SLOTS.
  func negotiate() throws(CheckFailure) {
    offered = VirtioFeatures(rawValue: try u64(.getFeatures))
    guard bit30 else { return }
    protocolOffer = ProtocolFeatures(rawValue: try u64(.getProtocolFeatures))
    let use = protocolOffer.intersection(Self.supportedProtocolFeatures)
    try send(.setProtocolFeatures, payload: .u64(use.rawValue))
    protocolAcked = use
    if use.contains(.mq) { queueNum = try u64(.getQueueNum) }
    if use.contains(.configureMemSlots) { memSlots = try u64(.getMaxMemSlots) }
  }

  /// Features to acknowledge: VERSION_1, bit 30 and (net) MTU, where offered.
  func wantedFeatures(device: VirtioDeviceType?) -> VirtioFeatures {
    var want: VirtioFeatures = [.version1, .protocolFeatures]
    if device == .net { want.insert(VirtioFeatures(bit: 3)) }
    return want.intersection(offered)
  }

  /// SET_OWNER, SET_FEATURES and (STATUS) SET_STATUS with FEATURES_OK.
  func own(device: VirtioDeviceType?) throws(CheckFailure) {
    try must(.setOwner)
    acked = wantedFeatures(device: device)
    try must(.setFeatures, payload: .u64(acked.rawValue))
    if protocolAcked.contains(.status) {
      try must(
        .setStatus,
        payload: .u64(UInt64(DeviceStatus.acknowledge | DeviceStatus.driver | DeviceStatus.featuresOK)))
    }
  }

  /// SET_MEM_TABLE with the one region of `memory`.
  func setMemTable(_ memory: DriverMemory) throws(CheckFailure) {
    try must(.setMemTable, payload: .memoryTable(MemoryTable(regions: [memory.wireRegion])), fds: [memory.memory.fd])
  }

  /// SET_STATUS with DRIVER_OK (STATUS negotiated): DPDK starts a device only then.
  func driverOK() throws(CheckFailure) {
    guard protocolAcked.contains(.status) else { return }
    let s = DeviceStatus.acknowledge | DeviceStatus.driver | DeviceStatus.featuresOK | DeviceStatus.driverOK
    try must(.setStatus, payload: .u64(UInt64(s)))
  }

  /// SET_STATUS 0 (STATUS negotiated): QEMU 7.2 sends it when it stops a device, before GET_VRING_BASE.
  func stopDevice() throws(CheckFailure) {
    guard protocolAcked.contains(.status) else { return }
    try must(.setStatus, payload: .u64(0))
  }

  /// Configures and starts `ring` the way QEMU does: SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR,
  /// SET_VRING_CALL, SET_VRING_KICK.
  /// `base` defaults to the ring's start index.
  func startRing(_ ring: TestRing, base: UInt16? = nil) throws(CheckFailure) {
    try must(.setVringNum, payload: .vringState(VringState(index: ring.index, num: UInt32(ring.size))))
    let b = UInt32(base ?? ring.startIndex)
    try must(.setVringBase, payload: .vringState(VringState(index: ring.index, num: b)))
    try must(.setVringAddr, payload: .vringAddress(ring.address))
    try must(.setVringCall, payload: .u64(UInt64(ring.index)), fds: [ring.call.fd])
    try must(.setVringKick, payload: .u64(UInt64(ring.index)), fds: [ring.kick.fd])
  }

  /// SET_VRING_ENABLE (only with bit 30 negotiated; without it rings start enabled).
  func enable(_ index: UInt32, _ on: Bool) throws(CheckFailure) {
    guard acked.contains(.protocolFeatures) else { return }
    try must(.setVringEnable, payload: .vringState(VringState(index: index, num: on ? 1 : 0)))
  }

  /// GET_VRING_BASE: the validated reply's `num` (the reply must name the same ring).
  func getVringBase(_ index: UInt32) throws(CheckFailure) -> UInt32 {
    let raw = try call(.getVringBase, payload: .vringState(VringState(index: index, num: 0)), replySize: 8)
    var r = ByteReader(raw.body)
    let i = (try? r.read(UInt32.self)) ?? 0
    let num = (try? r.read(UInt32.self)) ?? 0
    guard i == index else { throw CheckFailure("GET_VRING_BASE reply names ring \(i), asked for ring \(index)") }
    return num
  }
}

extension DriverMemory {
  /// The one region covering this memory, as SET_MEM_TABLE / ADD_MEM_REG carry it.
  var wireRegion: MemoryRegion {
    MemoryRegion(
      guestPhysAddr: guestBase, memorySize: UInt64(memory.size), userAddr: memory.address,
      mmapOffset: memory.fileOffset)
  }
}
