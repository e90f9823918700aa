import VhostProtocol
import VhostSystem
import VhostTransport

/// What happened on `migrationDone`.
public enum MigrationAnnouncement: Sendable, Equatable {
  /// The guest announces itself (VIRTIO_NET_F_GUEST_ANNOUNCE acked): nothing to do.
  case guestAnnounces
  /// SEND_RARP was sent so the back-end announces the MAC.
  case rarpSent
  /// Neither is possible.
  case unsupported
}

/// A device view on a vhost-user connection: the requests of one `vhost_dev`, whose queues start at
/// `firstQueueIndex`. Several views may share one connection (a multi-queue net device is one view per
/// queue pair); requests that concern the whole device go out only from the view at queue index 0.
public struct VhostUserFrontend: Sendable {
  public let connection: VhostUserConnection
  public let firstQueueIndex: UInt32

  /// Whether this view sends the one-time, device-wide requests.
  public var isFirst: Bool { firstQueueIndex == 0 }

  public var state: NegotiatedState { connection.state }

  @discardableResult
  func send(_ request: FrontendRequest, _ payload: Payload = .empty, fds: [OwnedFD] = [])
    throws(FrontendError) -> Received<FrontendRequest>?
  {
    if request.isOneTime && !isFirst { return nil }
    return try connection.perform(request, payload: payload, fds: fds)
  }

  func getU64(_ request: FrontendRequest) throws(FrontendError) -> UInt64 {
    guard let reply = try connection.perform(request), case .u64(let v) = reply.message.payload else {
      throw .invalidReply(request: request.name, reason: "expected a u64")
    }
    return v
  }

  // MARK: Negotiation

  /// GET_FEATURES.
  public func getFeatures() throws(FrontendError) -> VirtioFeatures {
    let f = VirtioFeatures(rawValue: try getU64(.getFeatures))
    connection.updateState { $0.backendFeatures = f }
    return f
  }

  /// The start of every session, in the seeds' order: GET_FEATURES; with virtio bit 30,
  /// GET_PROTOCOL_FEATURES and SET_PROTOCOL_FEATURES (the offer masked by what we support);
  /// GET_QUEUE_NUM with MQ; GET_MAX_MEM_SLOTS with CONFIGURE_MEM_SLOTS; SET_BACKEND_REQ_FD with
  /// BACKEND_REQ. Records why migration is blocked when LOG_SHMFD is missing.
  @discardableResult
  public func negotiate() throws(FrontendError) -> NegotiatedState {
    let features = try getFeatures()
    if features.contains(.protocolFeatures) {
      let offer = ProtocolFeatures(rawValue: try getU64(.getProtocolFeatures))
      let use = offer.intersection(connection.configuration.supportedProtocolFeatures)
      try connection.perform(.setProtocolFeatures, payload: .u64(use.rawValue))
      connection.updateState {
        $0.backendProtocolFeatures = offer
        $0.protocolFeatures = use
      }
    }
    let state = connection.state
    if state.protocolFeatures.contains(.mq) {
      if isFirst {
        let n = try getU64(.getQueueNum)
        guard n > 0 else { throw .invalidReply(request: "GET_QUEUE_NUM", reason: "back-end reports 0 queues") }
        connection.updateState { $0.maxQueues = n }
      }
    }
    if state.protocolFeatures.contains(.configureMemSlots) && isFirst {
      let slots = try getU64(.getMaxMemSlots)
      guard slots > 0 else { throw .invalidReply(request: "GET_MAX_MEM_SLOTS", reason: "back-end reports 0 slots") }
      connection.updateState { $0.maxMemSlots = slots }
    }
    if !state.protocolFeatures.contains(.logShmfd) {
      connection.updateState {
        $0.migrationBlocker = "migration is blocked: the back-end does not support VHOST_USER_PROTOCOL_F_LOG_SHMFD"
      }
      connection.configuration.logger.info("migration is blocked: back-end lacks LOG_SHMFD")
    }
    if state.protocolFeatures.contains(.backendReq) && connection.configuration.serveBackendChannel && isFirst {
      try setBackendReqFD()
    }
    return connection.state
  }

  /// SET_FEATURES with `wanted` masked by the back-end's offer (bit 30 is kept when offered).
  @discardableResult
  public func setFeatures(_ wanted: VirtioFeatures) throws(FrontendError) -> VirtioFeatures {
    let offered = connection.state.backendFeatures
    var ack = wanted.intersection(offered)
    if offered.contains(.protocolFeatures) { ack.insert(.protocolFeatures) }
    try send(.setFeatures, .u64(ack.rawValue))
    connection.updateState { $0.ackedFeatures = ack }
    return ack
  }

  /// SET_OWNER (once per connection).
  public func setOwner() throws(FrontendError) { try send(.setOwner) }

  /// RESET_OWNER (deprecated, once per connection).
  public func resetOwner() throws(FrontendError) { try send(.resetOwner) }

  /// RESET_DEVICE (RESET_DEVICE feature).
  public func resetDevice() throws(FrontendError) { try send(.resetDevice) }

  // MARK: Memory

  /// Installs the guest memory table. Regions that share a descriptor and are contiguous are
  /// merged. Up to 8 go in one SET_MEM_TABLE; more (or `preferSlots`) use ADD_MEM_REG/REM_MEM_REG
  /// when CONFIGURE_MEM_SLOTS is negotiated, within GET_MAX_MEM_SLOTS.
  public func setMemTable(_ regions: [GuestRegion], preferSlots: Bool = false) throws(FrontendError) {
    guard isFirst else { return }
    let merged = GuestRegion.merged(regions)
    let state = connection.state
    let slots = state.protocolFeatures.contains(.configureMemSlots)
    if slots && (preferSlots || merged.count > Limits.baselineRegions) {
      let limit = Int(state.maxMemSlots ?? UInt64(Limits.baselineRegions))
      guard merged.count <= limit else {
        throw .invalidArgument("\(merged.count) memory regions exceed the back-end's \(limit) slots")
      }
      for old in connection.installedRegions where !merged.contains(where: { $0.sameRange(as: old) }) {
        try send(.remMemReg, .singleRegion(SingleMemoryRegion(old.wire)))
        connection.installedRegions.removeAll { $0.sameRange(as: old) }
      }
      for new in merged where !connection.installedRegions.contains(where: { $0.sameRange(as: new) }) {
        try send(.addMemReg, .singleRegion(SingleMemoryRegion(new.wire)), fds: [new.fd])
        connection.installedRegions.append(new)
      }
      return
    }
    guard merged.count <= Limits.baselineRegions else {
      throw .invalidArgument(
        "\(merged.count) memory regions: SET_MEM_TABLE carries at most 8 and CONFIGURE_MEM_SLOTS is not negotiated")
    }
    try send(.setMemTable, .memoryTable(MemoryTable(regions: merged.map(\.wire))), fds: merged.map(\.fd))
    connection.installedRegions = merged
  }

  // MARK: Vrings

  func queue(_ index: UInt32) -> UInt32 { firstQueueIndex + index }

  /// SET_VRING_NUM for this view's queue `index`.
  public func setVringNum(_ index: UInt32, _ num: UInt32) throws(FrontendError) {
    try send(.setVringNum, .vringState(VringState(index: queue(index), num: num)))
  }

  /// SET_VRING_ADDR (the address's index is this view's relative queue index).
  public func setVringAddr(_ address: VringAddress) throws(FrontendError) {
    var a = address
    a.index = queue(address.index)
    try send(.setVringAddr, .vringAddress(a))
  }

  /// SET_VRING_BASE.
  public func setVringBase(_ index: UInt32, _ base: UInt32) throws(FrontendError) {
    try send(.setVringBase, .vringState(VringState(index: queue(index), num: base)))
  }

  /// GET_VRING_BASE: stops the ring and returns where it stopped; the reply must name the same ring.
  public func getVringBase(_ index: UInt32) throws(FrontendError) -> UInt32 {
    let q = queue(index)
    guard let reply = try send(.getVringBase, .vringState(VringState(index: q, num: 0))),
      case .vringState(let s) = reply.message.payload
    else { throw .invalidReply(request: "GET_VRING_BASE", reason: "no vring state") }
    guard s.index == q else {
      throw .invalidReply(request: "GET_VRING_BASE", reason: "reply is for ring \(s.index), asked for \(q)")
    }
    return s.num
  }

  func vringFile(_ request: FrontendRequest, _ index: UInt32, _ fd: OwnedFD?) throws(FrontendError) {
    let q = queue(index)
    guard UInt64(q) <= Limits.vringIndexMask else {
      throw .invalidArgument("\(request.name): ring \(q) cannot be addressed (at most 255)")
    }
    var value = UInt64(q) & Limits.vringIndexMask
    if fd == nil { value |= Limits.vringNoFDMask }
    try send(request, .u64(value), fds: fd.map { [$0] } ?? [])
  }

  /// SET_VRING_KICK; nil sets the NOFD bit (the back-end polls).
  public func setVringKick(_ index: UInt32, _ fd: OwnedFD?) throws(FrontendError) {
    try vringFile(.setVringKick, index, fd)
  }

  /// SET_VRING_CALL; nil sets the NOFD bit.
  public func setVringCall(_ index: UInt32, _ fd: OwnedFD?) throws(FrontendError) {
    try vringFile(.setVringCall, index, fd)
  }

  /// SET_VRING_ERR; nil sets the NOFD bit.
  public func setVringErr(_ index: UInt32, _ fd: OwnedFD?) throws(FrontendError) {
    try vringFile(.setVringErr, index, fd)
  }

  /// SET_VRING_ENABLE; refused with `.notNegotiated` when virtio bit 30 was not offered.
  public func setVringEnable(_ index: UInt32, _ enable: Bool) throws(FrontendError) {
    try send(.setVringEnable, .vringState(VringState(index: queue(index), num: enable ? 1 : 0)))
  }

  /// VRING_KICK: an in-band kick (INBAND_NOTIFICATIONS).
  public func vringKick(_ index: UInt32) throws(FrontendError) {
    try send(.vringKick, .vringState(VringState(index: queue(index), num: 0)))
  }

  // MARK: Logging and migration

  /// SET_LOG_BASE with the dirty log's descriptor (LOG_SHMFD); waits for the back-end's reply.
  public func setLogBase(_ log: SharedMemory) throws(FrontendError) {
    guard isFirst else { return }
    try send(
      .setLogBase, .log(LogDescription(mmapSize: UInt64(log.size), mmapOffset: log.fileOffset)), fds: [log.fd])
  }

  /// SET_LOG_FD: an eventfd the back-end signals when it modified the log.
  public func setLogFD(_ fd: OwnedFD) throws(FrontendError) { try send(.setLogFD, fds: [fd]) }

  /// After migration: nothing when the guest announces itself, SEND_RARP when RARP is negotiated.
  public func migrationDone(mac: [UInt8]) throws(FrontendError) -> MigrationAnnouncement {
    let guestAnnounce = VirtioFeatures(bit: 21)
    let s = connection.state
    if s.ackedFeatures.contains(guestAnnounce) { return .guestAnnounces }
    guard s.protocolFeatures.contains(.rarp) else { return .unsupported }
    guard mac.count == 6 else { throw .invalidArgument("a MAC address has 6 bytes, got \(mac.count)") }
    var value: UInt64 = 0
    for (i, b) in mac.enumerated() { value |= UInt64(b) << (8 * UInt64(i)) }
    try send(.sendRARP, .u64(value))
    return .rarpSent
  }

  /// NET_SET_MTU; with REPLY_ACK the back-end confirms the MTU is acceptable.
  public func netSetMTU(_ mtu: UInt16) throws(FrontendError) { try send(.netSetMTU, .u64(UInt64(mtu))) }

  // MARK: Current-spec requests

  /// GET_CONFIG: reads `size` bytes of config space at `offset`; the reply must have that size.
  public func getConfig(offset: UInt32 = 0, size: Int) throws(FrontendError) -> [UInt8] {
    guard size > 0, size <= Limits.maxConfigSize else {
      throw .invalidArgument("config size \(size) is outside 1...256")
    }
    let req = ConfigSpace(offset: offset, bytes: Array(repeating: 0, count: size))
    guard let reply = try send(.getConfig, .config(req)), case .config(let c) = reply.message.payload else {
      throw .invalidReply(request: "GET_CONFIG", reason: "no config space")
    }
    guard c.bytes.count == size, c.offset == offset else {
      throw .invalidReply(
        request: "GET_CONFIG", reason: "asked \(size) bytes at \(offset), got \(c.bytes.count) at \(c.offset)")
    }
    return c.bytes
  }

  /// SET_CONFIG.
  public func setConfig(offset: UInt32, bytes: [UInt8], flags: UInt32 = 0) throws(FrontendError) {
    guard !bytes.isEmpty, bytes.count <= Limits.maxConfigSize else {
      throw .invalidArgument("config size \(bytes.count) is outside 1...256")
    }
    try send(.setConfig, .config(ConfigSpace(offset: offset, flags: flags, bytes: bytes)))
  }

  /// SET_BACKEND_REQ_FD: hands the back-end one end of a socket pair and serves the other.
  public func setBackendReqFD() throws(FrontendError) {
    do {
      let (mine, theirs) = try UnixSocket.pair()
      let server = BackendChannelServer(
        socket: mine, replyAck: connection.state.protocolFeatures.contains(.replyAck),
        timeoutMilliseconds: connection.configuration.timeoutMilliseconds)
      try send(.setBackendReqFD, fds: [theirs.fd])
      connection.attach(backendChannel: server)
      server.start()
    } catch let error as FrontendError {
      throw error
    } catch let error as SystemError {
      throw .system(error)
    } catch {
      throw .invalidArgument("\(error)")
    }
  }

  /// The back-end channel, if SET_BACKEND_REQ_FD was sent.
  public var backendChannel: BackendChannelServer? { connection.backendChannel }

  /// GET_INFLIGHT_FD: the back-end allocates the inflight area; returns its description and mapping.
  public func getInflightFD(numQueues: UInt16, queueSize: UInt16) throws(FrontendError)
    -> (InflightDescription, SharedMemory?)
  {
    let req = InflightDescription(mmapSize: 0, mmapOffset: 0, numQueues: numQueues, queueSize: queueSize)
    guard let reply = try send(.getInflightFD, .inflight(req)), case .inflight(let d) = reply.message.payload,
      let fd = reply.fds.first
    else { throw .invalidReply(request: "GET_INFLIGHT_FD", reason: "no inflight description") }
    if d.mmapSize == 0 { return (d, nil) }
    guard d.mmapSize <= 1 << 30 else {
      throw .invalidReply(request: "GET_INFLIGHT_FD", reason: "inflight area of \(d.mmapSize) bytes is implausible")
    }
    do {
      return (d, try SharedMemory(mapping: fd, size: Int(d.mmapSize), offset: d.mmapOffset))
    } catch {
      throw .system(error)
    }
  }

  /// SET_INFLIGHT_FD: returns a previously obtained inflight area to a (restarted) back-end.
  public func setInflightFD(_ description: InflightDescription, memory: SharedMemory) throws(FrontendError) {
    try send(.setInflightFD, .inflight(description), fds: [memory.fd])
  }

  /// SET_STATUS (virtio device status byte).
  public func setStatus(_ status: UInt8) throws(FrontendError) { try send(.setStatus, .u64(UInt64(status))) }

  /// GET_STATUS.
  public func getStatus() throws(FrontendError) -> UInt8 {
    UInt8(truncatingIfNeeded: try getU64(.getStatus))
  }

  /// SET_DEVICE_STATE_FD: returns the back-end's result word and, if it chose one, its own fd.
  public func setDeviceStateFD(direction: DeviceStateTransfer.Direction, fd: OwnedFD) throws(FrontendError)
    -> (result: UInt64, backendFD: OwnedFD?)
  {
    guard
      let reply = try send(
        .setDeviceStateFD, .deviceStateTransfer(DeviceStateTransfer(direction: direction)), fds: [fd])
    else { throw .invalidReply(request: "SET_DEVICE_STATE_FD", reason: "no reply") }
    let value = reply.message.payload.u64Value ?? 0
    if value & 0xff != 0 { throw .refused(request: "SET_DEVICE_STATE_FD", status: value & 0xff) }
    let invalidFD = value & 0x100 != 0
    return (value, invalidFD ? nil : reply.fds.first)
  }

  /// CHECK_DEVICE_STATE.
  public func checkDeviceState() throws(FrontendError) {
    let v = try getU64(.checkDeviceState)
    guard v == 0 else { throw .refused(request: "CHECK_DEVICE_STATE", status: v) }
  }

  /// GET_SHARED_OBJECT: a dma-buf fd for `uuid`, if the back-end has one.
  public func getSharedObject(uuid: [UInt8]) throws(FrontendError) -> OwnedFD? {
    try send(.getSharedObject, .sharedObject(SharedObject(uuid: uuid)))?.fds.first
  }
}
