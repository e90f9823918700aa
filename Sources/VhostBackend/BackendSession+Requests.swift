import VhostProtocol
import VhostSystem
import VhostTransport
import Virtqueue

#if canImport(Glibc)
  import Glibc
#endif

/// Every front-end request, by its spec name.
extension BackendSession {
  func dispatch(_ r: Received<FrontendRequest>) throws -> Reply? {
    let m = r.message
    let p = m.payload
    switch m.code {
    case .getFeatures: return Reply(payload: .u64(offeredFeatures.rawValue))
    case .setFeatures: try setFeatures(p)
    case .setOwner: owner = true
    case .resetOwner: resetDevice()
    case .setMemTable: try setMemTable(p, r.fds)
    case .setLogBase: return try setLogBase(p, r.fds)
    case .setLogFD: logFD = try notifier(r.fds.first, .setLogFD)
    case .setVringNum: try setVringNum(p)
    case .setVringAddr: try setVringAddr(p)
    case .setVringBase: try setVringBase(p)
    case .getVringBase: return try getVringBase(p)
    case .setVringKick: try setVringKick(p, r.fds)
    case .setVringCall: try setVringFD(.setVringCall, p, r.fds) { $0.call = $1 }
    case .setVringErr: try setVringFD(.setVringErr, p, r.fds) { $0.err = $1 }
    case .getProtocolFeatures: return Reply(payload: .u64(offeredProtocolFeatures.rawValue))
    case .setProtocolFeatures: try setProtocolFeatures(p)
    case .getQueueNum:
      try require(.mq, m.code)
      return Reply(payload: .u64(UInt64(queues.count)))
    case .setVringEnable: try setVringEnable(p)
    case .sendRARP:
      try require(.rarp, m.code)
      var mac: [UInt8] = []
      let v = p.u64Value ?? 0
      for i in 0..<6 { mac.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
      try device.sendRARP(mac: mac)
    case .netSetMTU:
      try require(.mtu, m.code)
      try device.setMTU(UInt16(clamping: p.u64Value ?? 0))
    case .setBackendReqFD:
      try require(.backendReq, m.code)
      guard let fd = r.fds.first else { throw RequestFailure("SET_BACKEND_REQ_FD without a descriptor") }
      backendChannelLock.withLock {
        backendChannel?.socket.shutdown()
        backendChannel = MessageChannel(socket: UnixSocket(fd), timeoutMilliseconds: configuration.timeoutMilliseconds)
      }
    case .getConfig: return try getConfig(p)
    case .setConfig: try setConfig(p)
    case .getInflightFD: return try getInflightFD(p)
    case .setInflightFD: try setInflightFD(p, r.fds)
    case .resetDevice:
      try require(.resetDevice, m.code)
      resetDevice()
    case .vringKick:
      try require(.inbandNotifications, m.code)
      guard case .vringState(let s) = p else { throw RequestFailure("VRING_KICK without a vring state") }
      let q = try queue(s.index, m.code)
      workers.first { $0.queues.contains { $0 === q } }?.wake()
    case .getMaxMemSlots:
      try require(.configureMemSlots, m.code)
      return Reply(payload: .u64(UInt64(configuration.maxMemSlots)))
    case .addMemReg: try addMemReg(p, r.fds)
    case .remMemReg: try remMemReg(p)
    case .setStatus:
      try require(.status, m.code)
      // Status 0 is recorded, not acted on: QEMU 7.2 sends it when it *stops* a device, before the
      // GET_VRING_BASE that must still report where each ring stopped (a reset would answer 0 and
      // make a resumed guest's requests run twice).
      status = UInt8(truncatingIfNeeded: p.u64Value ?? 0)
    case .getStatus:
      try require(.status, m.code)
      return Reply(payload: .u64(UInt64(status)))
    case .setDeviceStateFD: return try setDeviceStateFD(p, r.fds)
    case .checkDeviceState:
      try require(.deviceState, m.code)
      return Reply(payload: .u64(waitStateTransfer()))
    default:
      // SET_VRING_ENDIAN, IOTLB_MSG, crypto, postcopy, GPU_SET_SOCKET, shared objects, SHMEM,
      // SKIP_DRAIN and unknown codes: their features are not offered.
      throw RequestFailure("\(m.code.name) is not supported (its feature is not offered)")
    }
    return nil
  }

  // MARK: Features

  func setFeatures(_ p: Payload) throws {
    let f = VirtioFeatures(rawValue: p.u64Value ?? 0)
    let unknown = f.subtracting(offeredFeatures)
    guard unknown.isEmpty else {
      throw RequestFailure("SET_FEATURES acks features never offered: 0x\(String(unknown.rawValue, radix: 16))")
    }
    if featuresSet && f.contains(.ringPacked) != ackedFeatures.contains(.ringPacked)
      && queues.contains(where: \.started)
    {
      throw RequestFailure("SET_FEATURES cannot change the ring layout while rings run")
    }
    ackedFeatures = f
    featuresSet = true
    if !f.contains(.protocolFeatures) {
      // Without VHOST_USER_F_PROTOCOL_FEATURES every ring is enabled at once.
      for q in queues { q.lock.withLock { q.enabled = true } }
      rearmWorkers()
    }
    let log = f.contains(.logAll) ? dirtyLog : nil
    for q in queues { q.lock.withLock { q.setLog(log) } }
    device.featuresAcknowledged(f)
  }

  func setProtocolFeatures(_ p: Payload) throws {
    let f = ProtocolFeatures(rawValue: p.u64Value ?? 0)
    let unknown = f.subtracting(offeredProtocolFeatures)
    guard unknown.isEmpty else { throw RequestFailure("SET_PROTOCOL_FEATURES acks unoffered bits \(unknown)") }
    if f.contains(.inbandNotifications) && !f.isSuperset(of: [.backendReq, .replyAck]) {
      throw RequestFailure("INBAND_NOTIFICATIONS without BACKEND_REQ and REPLY_ACK", fatal: true)
    }
    ackedProtocol = f
  }

  // MARK: Memory

  func swapMemory(_ new: GuestMemory) throws {
    // All or nothing: every running ring is rebuilt over the new table (from where it stands) with
    // all queue locks held; if one no longer fits, the request is refused and nothing changes.
    for q in queues { q.lock.lock() }
    defer { for q in queues { q.lock.unlock() } }
    var rebuilt: [(QueueHandle, DeviceRing)] = []
    for q in queues {
      guard q.started, let ring = q.ring else { continue }
      var c = ring.configuration
      c.base = ring.base
      do {
        rebuilt.append((q, try makeDeviceRing(c, memory: new)))
      } catch {
        throw RequestFailure("ring \(q.index) would lie outside the new memory table: \(error)")
      }
    }
    memory = new
    for q in queues { q.dropBurstStorage() }
    for (q, ring) in rebuilt {
      ring.log = q.log
      q.ring = ring
      attachInflight(q)
    }
  }

  func setMemTable(_ p: Payload, _ fds: [OwnedFD]) throws {
    try requireOwner(.setMemTable)
    guard case .memoryTable(let table) = p else { throw RequestFailure("SET_MEM_TABLE without regions") }
    var new = GuestMemory()
    for (region, fd) in zip(table.regions, fds) {
      do {
        new = try new.adding(region, fd: fd, limit: Limits.baselineRegions)
      } catch {
        throw RequestFailure("SET_MEM_TABLE: \(error)")
      }
    }
    try swapMemory(new)
    duplicateRegions = [:]
  }

  func addMemReg(_ p: Payload, _ fds: [OwnedFD]) throws {
    try require(.configureMemSlots, .addMemReg)
    try requireOwner(.addMemReg)
    guard case .singleRegion(let s) = p, let fd = fds.first else { throw RequestFailure("ADD_MEM_REG without region") }
    // QEMU up to 8.0 sends ADD_MEM_REG/REM_MEM_REG once per vhost_dev, so a multi-queue net device
    // (one vhost_dev per queue pair on one socket) adds the same region again: an exact duplicate is
    // counted (REM_MEM_REG takes it back) instead of refused.
    if memory.regions.contains(where: { $0.region == s.region }) {
      duplicateRegions[s.region, default: 0] += 1
      return
    }
    do {
      try swapMemory(try memory.adding(s.region, fd: fd, limit: configuration.maxMemSlots))
    } catch let e as RequestFailure {
      throw e
    } catch {
      throw RequestFailure("ADD_MEM_REG: \(error)")
    }
  }

  func remMemReg(_ p: Payload) throws {
    try require(.configureMemSlots, .remMemReg)
    guard case .singleRegion(let s) = p else { throw RequestFailure("REM_MEM_REG without region") }
    if let n = duplicateRegions[s.region], n > 0 {
      duplicateRegions[s.region] = n > 1 ? n - 1 : nil
      return
    }
    guard let new = memory.removing(s.region) else {
      throw RequestFailure("REM_MEM_REG: no region at GPA 0x\(String(s.region.guestPhysAddr, radix: 16))")
    }
    try swapMemory(new)
  }

  func setLogBase(_ p: Payload, _ fds: [OwnedFD]) throws -> Reply {
    try require(.logShmfd, .setLogBase)
    guard case .log(let d) = p, let fd = fds.first else { throw RequestFailure("SET_LOG_BASE needs a log and an fd") }
    // CVE-2020-10722: the size and offset must not overflow and must fit the file.
    guard d.mmapSize > 0, d.mmapSize <= 1 << 40, d.mmapOffset <= UInt64(Int64.max) - d.mmapSize else {
      throw RequestFailure("SET_LOG_BASE: invalid size \(d.mmapSize) / offset \(d.mmapOffset)")
    }
    if let fileSize = try? fd.fileSize(), fileSize >= 0, UInt64(fileSize) < d.mmapOffset + d.mmapSize {
      throw RequestFailure(
        "SET_LOG_BASE: log of \(d.mmapSize) bytes at \(d.mmapOffset) exceeds the \(fileSize)-byte file")
    }
    do {
      let log = DirtyLog(memory: try SharedMemory(mapping: fd, size: Int(d.mmapSize), offset: d.mmapOffset))
      dirtyLog = log
      let active = ackedFeatures.contains(.logAll) ? log : nil
      for q in queues { q.lock.withLock { q.setLog(active) } }
    } catch {
      throw RequestFailure("SET_LOG_BASE: \(error)")
    }
    return Reply(payload: .u64(0))
  }

  // MARK: Vrings

  func setVringNum(_ p: Payload) throws {
    try requireOwner(.setVringNum)
    guard case .vringState(let s) = p else { throw RequestFailure("bad payload") }
    let q = try queue(s.index, .setVringNum)
    // CVE-2019-14818: bound the size before anything is sized by it.
    guard s.num > 0, Int(s.num) <= min(device.maxQueueSize, Limits.maxQueueSize) else {
      throw RequestFailure("SET_VRING_NUM \(s.num) outside 1...\(device.maxQueueSize)")
    }
    guard packed || s.num & (s.num - 1) == 0 else { throw RequestFailure("split ring size \(s.num) not a power of 2") }
    try q.lock.withLock {
      guard !q.started else { throw RequestFailure("SET_VRING_NUM on started ring \(s.index)") }
      // bounded: 1...Limits.maxQueueSize, checked above
      q.size = UInt16(s.num)
    }
  }

  func setVringAddr(_ p: Payload) throws {
    try requireOwner(.setVringAddr)
    guard case .vringAddress(let a) = p else { throw RequestFailure("bad payload") }
    let q = try queue(a.index, .setVringAddr)
    try q.lock.withLock {
      q.address = a
      if q.started, let ring = q.ring {
        // Logging toggled (or addresses moved) on a running ring: rebuild from where it stands.
        var c = ring.configuration
        c.base = ring.base
        c.descUserAddr = a.descUserAddr
        c.availUserAddr = a.availUserAddr
        c.usedUserAddr = a.usedUserAddr
        c.logUsed = a.flags & VringAddress.flagLog != 0
        c.logGuestAddr = a.logGuestAddr
        do {
          q.ring = try makeDeviceRing(c, memory: memory)
          q.ring?.log = q.log
          attachInflight(q)
        } catch {
          throw RequestFailure("SET_VRING_ADDR: \(error)")
        }
      }
    }
  }

  func setVringBase(_ p: Payload) throws {
    try requireOwner(.setVringBase)
    guard case .vringState(let s) = p else { throw RequestFailure("bad payload") }
    let q = try queue(s.index, .setVringBase)
    try q.lock.withLock {
      guard !q.started else { throw RequestFailure("SET_VRING_BASE on started ring \(s.index)") }
      q.baseNum = s.num
    }
  }

  func getVringBase(_ p: Payload) throws -> Reply {
    guard case .vringState(let s) = p else { throw RequestFailure("bad payload") }
    let q = try queue(s.index, .getVringBase)
    // Chains the driver published before asking are served (so nothing it counted as sent is left
    // behind), then the ring stops fetching and requests in flight complete first.
    q.service(device)
    if !q.quiesce(milliseconds: configuration.timeoutMilliseconds) {
      log.warning("GET_VRING_BASE: ring \(s.index) still has \(q.outstanding) requests in flight")
    }
    let num: UInt32 = q.lock.withLock {
      q.generation &+= 1
      q.outstanding = 0
      let n = q.ring.map { $0.base.num(packed: packed) } ?? q.baseNum
      q.started = false
      q.ring = nil
      q.dropBurstStorage()
      q.kick = nil
      q.kickPolled = false
      q.baseNum = n
      return n
    }
    rearmWorkers()
    return Reply(payload: .vringState(VringState(index: s.index, num: num)))
  }

  func setVringKick(_ p: Payload, _ fds: [OwnedFD]) throws {
    try requireOwner(.setVringKick)
    let v = p.u64Value ?? 0
    // bounded: masked to 8 bits
    let q = try queue(UInt32(v & Limits.vringIndexMask), .setVringKick)
    let polled = v & Limits.vringNoFDMask != 0
    let kick = polled ? nil : try notifier(fds.first, .setVringKick)
    try q.lock.withLock {
      if let kick {
        for (other, name) in [(q.call, "call"), (q.err, "error")]
        where other.map({ kick.fd.isSameFile(as: $0.fd) }) == true {
          throw RequestFailure("SET_VRING_KICK: ring \(q.index)'s kick descriptor is its \(name) descriptor")
        }
      }
      // A new kick fd for a running ring keeps its position (it does not restart from the base).
      if q.started, let ring = q.ring { q.baseNum = ring.base.num(packed: packed) }
      q.kick = kick
      q.kickPolled = polled
      // The ring starts now (not on the first kick).
      try start(q)
    }
    rearmWorkers()
  }

  /// Builds the live ring (caller holds the lock).
  func start(_ q: QueueHandle) throws {
    guard q.size > 0, let a = q.address else {
      q.started = false
      throw RequestFailure("ring \(q.index) started before SET_VRING_NUM/SET_VRING_ADDR")
    }
    let c = RingConfiguration(
      size: q.size, desc: a.descUserAddr, avail: a.availUserAddr, used: a.usedUserAddr,
      logUsed: a.flags & VringAddress.flagLog != 0, logGuestAddr: a.logGuestAddr,
      eventIndex: ackedFeatures.contains(.eventIdx), packed: packed,
      base: VringBase(num: q.baseNum, packed: packed))
    do {
      q.ring = try makeDeviceRing(c, memory: memory)
    } catch {
      q.started = false
      throw RequestFailure("ring \(q.index): \(error)")
    }
    q.ring?.log = q.log
    q.started = true
    attachInflight(q)
    q.ring?.setKicksWanted(!configuration.poll && !q.kickPolled)
  }

  /// Connects a started ring to its inflight area; on the first start after a restart the
  /// requests recorded as in flight are queued for resubmission. The area is the front-end's
  /// memory: one that does not describe the ring is reset (and said so), never followed.
  func attachInflight(_ q: QueueHandle) {
    guard let region = inflight else { return }
    if let packedRing = q.ring as? PackedDeviceRing {
      guard let tracker = q.packedTracker ?? region.packedQueue(q.index, ringSize: q.size) else {
        log.warning("ring \(q.index): the inflight area has no room for \(q.size) descriptors; not tracked")
        return
      }
      q.packedTracker = tracker
      if tracker.isInitialized {
        if !q.inflightAttached {
          switch packedRing.replay(tracker, features: ackedFeatures.rawValue) {
          case .reset(let reason):
            log.warning("ring \(q.index): inflight area not replayed: \(reason)")
          case .pending(let chains):
            q.resubmitChains = chains
            if !chains.isEmpty { log.info("ring \(q.index): resubmitting \(chains.count) requests left in flight") }
          }
        }
      } else {
        let used = packedRing.usedPosition
        tracker.initialize(
          features: ackedFeatures.rawValue, descNum: q.size, usedIndex: used.index, usedWrap: used.wrap)
      }
      q.inflightAttached = true
      packedRing.inflight = tracker
      return
    }
    guard let split = q.ring as? SplitDeviceRing else { return }
    guard let tracker = region.queue(q.index, ringSize: q.size) else {
      log.warning("ring \(q.index): the inflight area has no room for \(q.size) descriptors; not tracked")
      return
    }
    if tracker.isInitialized {
      if !q.inflightAttached {
        switch tracker.recover(usedIndex: split.usedIndex, features: ackedFeatures.rawValue) {
        case .reset(let reason):
          log.warning("ring \(q.index): inflight area reset, nothing resubmitted: \(reason)")
        case .pending(let heads):
          q.resubmit = heads
          split.resume(afterResubmitting: heads.count)
          if !heads.isEmpty { log.info("ring \(q.index): resubmitting \(heads.count) requests left in flight") }
        }
      }
    } else {
      tracker.initialize(features: ackedFeatures.rawValue, descNum: q.size, usedIndex: split.usedIndex)
    }
    q.inflightAttached = true
    split.inflight = tracker
  }

  func setVringFD(_ code: FrontendRequest, _ p: Payload, _ fds: [OwnedFD], _ assign: (QueueHandle, EventFD?) -> Void)
    throws
  {
    let v = p.u64Value ?? 0
    // bounded: masked to 8 bits
    let q = try queue(UInt32(v & Limits.vringIndexMask), code)
    let fd = v & Limits.vringNoFDMask != 0 ? nil : try notifier(fds.first, code)
    try q.lock.withLock {
      if let fd, let kick = q.kick, fd.fd.isSameFile(as: kick.fd) {
        // The worker would wake itself with every signal it sends.
        throw RequestFailure("\(code.name): ring \(q.index)'s descriptor is its kick descriptor")
      }
      assign(q, fd)
    }
  }

  /// A kick, call or error descriptor from the front-end, made non-blocking: a pipe nobody reads
  /// can then never block a worker (a full one reads as "already signalled").
  func notifier(_ fd: OwnedFD?, _ code: FrontendRequest) throws -> EventFD? {
    guard let fd else { return nil }
    do {
      return try EventFD(peer: fd)
    } catch {
      throw RequestFailure("\(code.name): unusable descriptor: \(error)")
    }
  }

  func setVringEnable(_ p: Payload) throws {
    guard ackedFeatures.contains(.protocolFeatures) || !featuresSet else {
      throw RequestFailure("SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES negotiated")
    }
    guard case .vringState(let s) = p, s.num <= 1 else { throw RequestFailure("SET_VRING_ENABLE num must be 0 or 1") }
    let q = try queue(s.index, .setVringEnable)
    // Disabling: what the driver published while the ring was enabled is served first, as the
    // worker would have. (DPDK's virtio_user disables its rings, then sends GET_VRING_BASE: without
    // this, frames it counted as sent would be left in the ring.)
    if s.num == 0 { q.service(device) }
    q.lock.withLock { q.enabled = s.num == 1 }
    rearmWorkers()
  }

  // MARK: Config, inflight, state

  func getConfig(_ p: Payload) throws -> Reply {
    try require(.config, .getConfig)
    guard case .config(let c) = p, !c.bytes.isEmpty else { throw RequestFailure("GET_CONFIG of size 0") }
    let space = device.readConfig()
    let start = Int(c.offset)
    guard start <= space.count else { throw RequestFailure("GET_CONFIG offset \(start) beyond \(space.count)") }
    var bytes = Array(space[start..<min(space.count, start + c.bytes.count)])
    bytes += [UInt8](repeating: 0, count: c.bytes.count - bytes.count)
    return Reply(payload: .config(ConfigSpace(offset: c.offset, flags: c.flags, bytes: bytes)))
  }

  func setConfig(_ p: Payload) throws {
    try require(.config, .setConfig)
    guard case .config(let c) = p else { throw RequestFailure("bad payload") }
    do {
      try device.writeConfig(
        offset: Int(c.offset), bytes: c.bytes, migration: c.flags & ConfigSpace.flagLiveMigration != 0)
    } catch {
      throw RequestFailure("SET_CONFIG: \(error)")
    }
  }

  func getInflightFD(_ p: Payload) throws -> Reply {
    try require(.inflightShmfd, .getInflightFD)
    guard case .inflight(let d) = p, d.numQueues > 0, Int(d.numQueues) <= 256, d.queueSize > 0,
      Int(d.queueSize) <= Limits.maxQueueSize
    else { throw RequestFailure("GET_INFLIGHT_FD: bad queue count/size", fatal: true) }
    let region: InflightRegion
    do {
      region = try InflightRegion(queueCount: Int(d.numQueues), queueSize: Int(d.queueSize))
    } catch {
      throw RequestFailure("GET_INFLIGHT_FD: \(error)", fatal: true)
    }
    inflight = region
    let reply = InflightDescription(
      mmapSize: UInt64(region.memory.size), mmapOffset: 0, numQueues: d.numQueues, queueSize: d.queueSize)
    return Reply(payload: .inflight(reply), fds: [region.memory.fd])
  }

  func setInflightFD(_ p: Payload, _ fds: [OwnedFD]) throws {
    try require(.inflightShmfd, .setInflightFD)
    guard case .inflight(let d) = p, let fd = fds.first, d.numQueues > 0, Int(d.numQueues) <= 256,
      d.queueSize > 0, Int(d.queueSize) <= Limits.maxQueueSize, d.mmapSize > 0, d.mmapSize <= 1 << 32,
      d.mmapOffset <= UInt64(Int64.max) - d.mmapSize
    else { throw RequestFailure("SET_INFLIGHT_FD: bad description") }
    do {
      let mem = try SharedMemory(mapping: fd, size: Int(d.mmapSize), offset: d.mmapOffset)
      inflight = try InflightRegion(memory: mem, queueCount: Int(d.numQueues), queueSize: Int(d.queueSize))
    } catch {
      throw RequestFailure("SET_INFLIGHT_FD: \(error)")
    }
  }

  // MARK: Reset and the back-end channel

  func resetDevice() {
    for q in queues { q.lock.withLock { q.reset() } }
    rearmWorkers()
    device.reset()
    status = 0
  }

  /// Sends BACKEND_VRING_CALL / BACKEND_VRING_ERR on the back-end channel (INBAND_NOTIFICATIONS),
  /// from a worker: the send may wait `inbandSendMilliseconds` for room and never for a reply; a
  /// front-end that does not read its channel loses it (it is shut down) rather than stalling the
  /// ring.
  func sendInband(_ code: BackendRequest, queue: Int) {
    guard ackedProtocol.contains(.inbandNotifications) else { return }
    backendChannelLock.withLock {
      guard let backendChannel else { return }
      do {
        try backendChannel.send(
          Message(code, payload: .vringState(VringState(index: UInt32(truncatingIfNeeded: queue), num: 0))),
          timeoutMilliseconds: Self.inbandSendMilliseconds)
      } catch {
        log.warning("back-end channel: \(code.name) for ring \(queue) not sent (\(error)); channel closed")
        backendChannel.socket.shutdown()
        self.backendChannel = nil
      }
    }
  }

  /// How long an in-band notification may wait for room on the back-end channel.
  static let inbandSendMilliseconds = 100

  /// Sends BACKEND_CONFIG_CHANGE_MSG; with REPLY_ACK waits (up to the configured timeout) for the
  /// front-end's answer. Sends are serialised with the channel lock, which is not held while the
  /// reply is awaited; at most one caller waits for replies (`postConfigChange` uses one sender).
  public func notifyConfigChange() throws {
    let (channel, ack): (MessageChannel, Bool) = try backendChannelLock.withLock {
      guard let backendChannel, ackedProtocol.contains(.config) else {
        throw RequestFailure("no back-end channel or CONFIG not negotiated")
      }
      let ack = ackedProtocol.contains(.replyAck)
      try backendChannel.send(Message(BackendRequest.configChange, flags: ack ? [.version1, .needReply] : .version1))
      return (backendChannel, ack)
    }
    if ack {
      let reply = try channel.receiveReply(to: BackendRequest.configChange)
      guard reply.message.payload.u64Value == 0 else { throw RequestFailure("front-end refused CONFIG_CHANGE") }
    }
  }

  /// Asks for a BACKEND_CONFIG_CHANGE_MSG to be sent soon, from any thread, without waiting.
  /// Requests coalesce: one sender thread per session at most, and any number of requests made
  /// while it sends become one more message — a flood (SEND_RARP, say) costs neither threads nor
  /// memory.
  public func postConfigChange() {
    let start: Bool = backendRequests.withLock {
      $0.configChangePending = true
      if $0.senderRunning { return false }
      $0.senderRunning = true
      return true
    }
    guard start else { return }
    do {
      try SystemThread.start(name: "vhost-backend-req") { [weak self] in self?.sendPostedRequests() }
    } catch {
      backendRequests.withLock { $0.senderRunning = false }
      log.warning("back-end channel: no thread to send CONFIG_CHANGE: \(error)")
    }
  }

  /// The sender thread: sends until nothing is pending.
  func sendPostedRequests() {
    while true {
      let go: Bool = backendRequests.withLock {
        if $0.configChangePending {
          $0.configChangePending = false
          return true
        }
        $0.senderRunning = false
        return false
      }
      guard go else { return }
      do {
        try notifyConfigChange()
      } catch {
        log.info("back-end channel: CONFIG_CHANGE: \(error)")
      }
    }
  }

  /// Closes the back-end channel; a sender waiting on it returns at once.
  func closeBackendChannel() {
    backendChannelLock.withLock {
      backendChannel?.socket.shutdown()
      backendChannel = nil
    }
  }

  func teardown() {
    stopWorkers()
    // What the driver published before it left is still processed (its memory is still mapped),
    // and requests in flight on other threads complete before the rings go away.
    for q in queues {
      q.service(device)
      _ = q.quiesce(milliseconds: configuration.timeoutMilliseconds)
    }
    for q in queues { q.lock.withLock { q.reset() } }
    device.reset()
    memory = GuestMemory()
    duplicateRegions = [:]
    dirtyLog = nil
    closeBackendChannel()
    _ = waitStateTransfer()
  }
}
