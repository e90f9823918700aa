import Foundation
import Testing
import VhostBackend
import VhostFrontend
import VhostProtocol
import VhostSystem
import Virtqueue

/// Chains submitted on a `QueueDriver` and what must come back.
struct PendingChains {
  var expected: [UInt16: (input: [UInt8], writable: UInt64)] = [:]
}

extension BackendTests {
  /// Adds `count` echo chains (fresh buffers from the driver's memory) without kicking.
  func submit(_ driver: DeviceDriver, _ q: QueueDriver, count: Int, seed: UInt64, length: Int = 64) throws
    -> PendingChains
  {
    var p = PendingChains()
    for i in 0..<count {
      let input = pattern(seed: seed, i, count: length)
      let r = try driver.allocate(length)
      let w = try driver.allocate(length)
      try driver.memory.memory.write(input, at: r)
      try driver.memory.memory.fill(0, at: w, count: length)
      let head = try q.ring.add([
        DriverBuffer(guestAddress: driver.memory.gpa(r), length: UInt32(length), deviceWritable: false),
        DriverBuffer(guestAddress: driver.memory.gpa(w), length: UInt32(length), deviceWritable: true),
      ])
      p.expected[head] = (input, w)
    }
    return p
  }

  /// Checks completions against what was submitted.
  func verify(
    _ driver: DeviceDriver, _ pending: PendingChains, _ used: [UsedElement],
    sourceLocation: SourceLocation = #_sourceLocation
  ) throws {
    #expect(used.count == pending.expected.count, sourceLocation: sourceLocation)
    for u in used {
      guard let e = pending.expected[u.head] else {
        Issue.record("completion for head \(u.head), which was not submitted", sourceLocation: sourceLocation)
        continue
      }
      #expect(u.length == UInt32(e.input.count), sourceLocation: sourceLocation)
      #expect(
        try driver.memory.memory.read(at: e.writable, count: e.input.count) == xor5a(e.input),
        sourceLocation: sourceLocation)
    }
  }

  /// Submits, kicks, waits and verifies `count` chains.
  func echoChains(
    _ driver: DeviceDriver, _ q: QueueDriver, count: Int, seed: UInt64,
    sourceLocation: SourceLocation = #_sourceLocation
  ) throws {
    let p = try submit(driver, q, count: count, seed: seed)
    try q.notifyIfNeeded()
    try verify(driver, p, try collectUsed(q, count: count), sourceLocation: sourceLocation)
  }

  /// Runs `body` and expects the back-end to refuse it (a non-zero REPLY_ACK).
  func expectRefused(_ what: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    do {
      try body()
      Issue.record("\(what) was accepted", sourceLocation: sourceLocation)
    } catch FrontendError.refused {
    } catch {
      Issue.record("\(what): \(error)", sourceLocation: sourceLocation)
    }
  }

  func expectNotNegotiated(_ what: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void)
  {
    do {
      try body()
      Issue.record("\(what) was sent", sourceLocation: sourceLocation)
    } catch FrontendError.notNegotiated {
    } catch {
      Issue.record("\(what): \(error)", sourceLocation: sourceLocation)
    }
  }

  /// Pages marked in a dirty log.
  func dirtyPages(_ log: SharedMemory) throws -> Set<UInt64> {
    var pages: Set<UInt64> = []
    for (i, byte) in try log.read(at: 0, count: log.size).enumerated() where byte != 0 {
      for bit in 0..<8 where byte & (1 << bit) != 0 { pages.insert(UInt64(i * 8 + bit)) }
    }
    return pages
  }

  @Test("every request the back-end offers, sent through our front-end, has its effect")
  func everyRequest() throws {
    // Both queues on one worker thread: a chain served on ring 1 proves the worker went past ring 0.
    let backend = try LoopbackBackend(device: EchoDevice(queues: 2), configuration: .quiet(queuesPerThread: 2))
    defer { backend.stop() }
    let device = backend.device
    let fdsBefore = settledDescriptorCount()
    let listingBefore = openDescriptors()
    do {
      let connection = try backend.connect()
      defer { connection.close() }
      let frontend = connection.device()

      // GET_FEATURES.
      let offered = try frontend.getFeatures()
      #expect(offered == [.version1, .protocolFeatures, .indirectDesc, .eventIdx, .logAll, .ringPacked])
      // GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, SET_BACKEND_REQ_FD.
      let state = try frontend.negotiate()
      #expect(state.backendProtocolFeatures == BackendConfiguration.frameworkProtocolFeatures)
      #expect(
        state.protocolFeatures
          == BackendConfiguration.frameworkProtocolFeatures.intersection(FrontendConfiguration.defaultProtocolFeatures))
      #expect(state.protocolFeatures.contains(.replyAck))
      #expect(state.maxQueues == 2)
      #expect(state.maxMemSlots == 509)
      #expect(state.migrationBlocker == nil)
      #expect(frontend.backendChannel != nil)

      // SET_OWNER gates the ring and memory requests.
      expectRefused("SET_VRING_NUM before SET_OWNER") { try frontend.setVringNum(0, 256) }
      // SET_OWNER, SET_FEATURES, SET_STATUS, SET_MEM_TABLE, SET_VRING_NUM/BASE/ADDR/KICK/CALL, SET_VRING_ENABLE.
      let driver = try DeviceDriver(frontend: frontend, features: .version1, queueCount: 2, queueSize: 256)
      #expect(driver.ackedFeatures == [.version1, .protocolFeatures])
      #expect(device.acked == [.version1, .protocolFeatures])
      let q0 = driver.queues[0]
      let q1 = driver.queues[1]

      // GET_STATUS / SET_STATUS.
      #expect(try frontend.getStatus() == 0x0f)
      try frontend.setStatus(DeviceStatus.acknowledge | DeviceStatus.driver)
      #expect(try frontend.getStatus() == 0x03)
      try frontend.setStatus(0x0f)
      #expect(try frontend.getStatus() == 0x0f)

      // The data path; SET_VRING_CALL: the call eventfd fires.
      q0.call.drain()
      let first = try submit(driver, q0, count: 10, seed: 10)
      try q0.notifyIfNeeded()
      #expect(waitUntil { q0.call.wait(timeoutMilliseconds: 0) }, "call eventfd of ring 0 never signalled")
      try verify(driver, first, try collectUsed(q0, count: 10))
      #expect(waitUntil { device.chains(0) == 10 })

      // GET_VRING_BASE after k chains returns k; SET_VRING_BASE k and SET_VRING_KICK restart it.
      #expect(try frontend.getVringBase(0) == 10)
      try frontend.setVringBase(0, 10)
      try frontend.setVringKick(0, q0.kick.fd)
      try echoChains(driver, q0, count: 5, seed: 11)
      #expect(waitUntil { device.chains(0) == 15 })

      // SET_VRING_ENABLE 0: ring 0 keeps its chains, even when kicked, until enabled again.
      try frontend.setVringEnable(0, false)
      let held = try submit(driver, q0, count: 3, seed: 12)
      try q0.kick.signal()
      // Ring 1 shares the worker: two round trips on it mean the worker handled ring 0's kick.
      try echoChains(driver, q1, count: 1, seed: 13)
      try echoChains(driver, q1, count: 1, seed: 14)
      #expect(try q0.ring.reapUsed().isEmpty, "a disabled ring was served")
      #expect(device.chains(0) == 15)
      try frontend.setVringEnable(0, true)
      try verify(driver, held, try collectUsed(q0, count: 3))
      #expect(waitUntil { device.chains(0) == 18 })

      // SET_VRING_ERR: a chain with a descriptor outside guest memory comes back empty and fires it.
      let err = try EventFD()
      try frontend.setVringErr(1, err.fd)
      let session = try #require(backend.server.currentSession)
      let errorsBefore = session.queues[1].chainErrors
      let w = try driver.allocate(64)
      try q1.ring.add([
        DriverBuffer(guestAddress: 0xdead_0000_0000, length: 64, deviceWritable: false),
        DriverBuffer(guestAddress: driver.memory.gpa(w), length: 64, deviceWritable: true),
      ])
      try q1.notifyIfNeeded()
      let bad = try collectUsed(q1, count: 1)
      #expect(bad.first?.length == 0)
      #expect(waitUntil { err.wait(timeoutMilliseconds: 0) }, "err eventfd never signalled")
      #expect(waitChainErrors(session.queues[1], errorsBefore + 1, isUnmapped))
      try echoChains(driver, q1, count: 2, seed: 15)

      // GET_CONFIG / SET_CONFIG.
      #expect(try frontend.getConfig(size: 16) == device.configSpace)
      #expect(try frontend.getConfig(offset: 4, size: 8) == Array(device.configSpace[4..<12]))
      #expect(
        try frontend.getConfig(offset: 8, size: 16) == Array(device.configSpace[8..<16]) + Array(repeating: 0, count: 8)
      )
      expectRefused("SET_CONFIG of a read-only config space") {
        try frontend.setConfig(offset: 0, bytes: [1, 2, 3, 4])
      }

      // SET_LOG_BASE + LOG_ALL (+ VHOST_VRING_F_LOG on ring 0): written pages and the used ring are logged.
      let log = try SharedMemory(anonymous: "betests-dirty-log", size: 4096)
      try frontend.setLogBase(log)
      let withLog = try frontend.setFeatures([.version1, .logAll])
      #expect(withLog.contains(.logAll))
      #expect(device.acked.contains(.logAll))
      let usedGPA = driver.memory.gpa(q0.ring.usedOffset)
      try frontend.setVringAddr(
        VringAddress(
          index: 0, flags: VringAddress.flagLog, desc: q0.ring.descUserAddr, used: q0.ring.usedUserAddr,
          avail: q0.ring.availUserAddr, log: usedGPA))
      #expect(try dirtyPages(log).isEmpty)
      let page = Int(DirtyLog.pageSize)
      let readable = try driver.allocate(2 * page, alignment: page)
      let writable = try driver.allocate(4 * page, alignment: page)
      let input = pattern(seed: 16, 0, count: 5000)
      try driver.memory.memory.write(input, at: readable)
      let slot = UInt64(q0.ring.availIndex % q0.ring.size)
      try q0.ring.add([
        DriverBuffer(guestAddress: driver.memory.gpa(readable), length: 5000, deviceWritable: false),
        DriverBuffer(guestAddress: driver.memory.gpa(writable + 4000), length: 5000, deviceWritable: true),
      ])
      try q0.notifyIfNeeded()
      let logged = try collectUsed(q0, count: 1)
      #expect(logged.first?.length == 5000)
      #expect(try driver.memory.memory.read(at: writable + 4000, count: 5000) == xor5a(input))
      let firstPage = driver.memory.gpa(writable) / DirtyLog.pageSize
      let expectedPages: Set<UInt64> = [
        firstPage, firstPage + 1, firstPage + 2, (usedGPA + 2) / DirtyLog.pageSize,
        (usedGPA + 4 + slot * 8) / DirtyLog.pageSize,
        (usedGPA + 4 + slot * 8 + 7) / DirtyLog.pageSize,
      ]
      #expect(try dirtyPages(log) == expectedPages)
      // LOG_ALL off again: nothing more is logged.
      try frontend.setFeatures(.version1)
      let before = try dirtyPages(log)
      let quiet = try driver.allocate(page, alignment: page)
      try q0.ring.add([
        DriverBuffer(guestAddress: driver.memory.gpa(readable), length: 64, deviceWritable: false),
        DriverBuffer(guestAddress: driver.memory.gpa(quiet), length: 64, deviceWritable: true),
      ])
      try q0.notifyIfNeeded()
      #expect(try collectUsed(q0, count: 1).first?.length == 64)
      #expect(try dirtyPages(log) == before)
      // SET_LOG_FD is accepted.
      try frontend.setLogFD(try EventFD().fd)

      // GET_INFLIGHT_FD: room for the packed layout per queue (32-byte header + 32 bytes per
      // descriptor, 64-byte aligned), which also holds the split one; a restarted ring uses it.
      let (description, area) = try frontend.getInflightFD(numQueues: 2, queueSize: 256)
      #expect(description.mmapSize == UInt64(2 * InflightRegion.queueRegionSize(queueSize: 256)))
      #expect(description.mmapSize == 2 * 8256)
      #expect(description.numQueues == 2 && description.queueSize == 256)
      let inflight = try #require(area)
      #expect(inflight.size == Int(description.mmapSize))
      let base0 = try frontend.getVringBase(0)
      try frontend.setVringBase(0, base0)
      try frontend.setVringKick(0, q0.kick.fd)
      #expect(try inflight.load(UInt16.self, at: 8) == 1, "inflight area version")
      #expect(try inflight.load(UInt16.self, at: 10) == 256, "inflight desc_num")
      try echoChains(driver, q0, count: 4, seed: 17)
      let usedIdx = try driver.memory.memory.loadAcquire16(at: q0.ring.usedOffset + 2)
      #expect(waitUntil { (try? inflight.load(UInt16.self, at: 14)) == usedIdx }, "inflight used_idx")
      // SET_INFLIGHT_FD hands the same area back; the ring carries on after a restart.
      try frontend.setInflightFD(description, memory: inflight)
      let base1 = try frontend.getVringBase(0)
      try frontend.setVringBase(0, base1)
      try frontend.setVringKick(0, q0.kick.fd)
      try echoChains(driver, q0, count: 2, seed: 18)

      // BACKEND_CONFIG_CHANGE_MSG over the channel SET_BACKEND_REQ_FD set up.
      try session.notifyConfigChange()
      #expect(frontend.backendChannel?.configChanges == 1)

      // Not negotiated with the echo device: RARP, MTU, in-band kicks.
      #expect(try frontend.migrationDone(mac: [2, 0, 0, 0, 0, 1]) == .unsupported)
      expectNotNegotiated("NET_SET_MTU") { try frontend.netSetMTU(1500) }
      expectNotNegotiated("VRING_KICK") { try frontend.vringKick(0) }

      // RESET_DEVICE: the device is reset, the status cleared, the rings forgotten.
      let resets = device.resets
      try frontend.resetDevice()
      #expect(device.resets == resets + 1)
      #expect(try frontend.getStatus() == 0)
      #expect(try frontend.getVringBase(0) == 0)
      // RESET_OWNER (deprecated) resets as well.
      try frontend.resetOwner()
      #expect(device.resets == resets + 2)

    }
    // Everything the session held is released once the front-end is gone.
    #expect(backend.waitIdle())
    expectDescriptorCount(fdsBefore, before: listingBefore)
  }

  @Test("SET_VRING_KICK again on a running ring keeps its position (no chain is served twice)")
  func kickFDReplacedOnRunningRing() throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 1))
    defer { backend.stop() }
    let connection = try backend.connect()
    defer { connection.close() }
    let frontend = connection.device()
    let driver = try DeviceDriver(frontend: frontend, features: .version1, queueCount: 1, queueSize: 256)
    let q = driver.queues[0]
    try echoChains(driver, q, count: 10, seed: 20)
    #expect(waitUntil { backend.device.chains(0) == 10 })
    // QEMU re-sends SET_VRING_KICK when it swaps the notifier; a fresh eventfd here.
    let kick = try EventFD()
    try frontend.setVringKick(0, kick.fd)
    let p = try submit(driver, q, count: 1, seed: 21)
    try kick.signal()
    do {
      // One process() call serves everything it finds, then counts: 11 if the ring kept its place.
      #expect(waitUntil(timeout: 2) { backend.device.chains(0) >= 11 })
      #expect(backend.device.chains(0) == 11, "the device served \(backend.device.chains(0)) chains; 11 were submitted")
      let used = try collectUsed(q, count: 1, timeoutMilliseconds: 2000)
      try verify(driver, p, used)
    }
  }

  @Test("INBAND_NOTIFICATIONS: VRING_KICK in, BACKEND_VRING_CALL and BACKEND_VRING_ERR out")
  func inbandNotifications() throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 1))
    defer { backend.stop() }
    let connection = try backend.connect(configuration: .quiet(extraProtocolFeatures: .inbandNotifications))
    defer { connection.close() }
    let frontend = connection.device()
    let state = try frontend.negotiate()
    #expect(state.protocolFeatures.contains(.inbandNotifications))
    let driver = try DeviceDriver(frontend: frontend, features: .version1, queueCount: 1, queueSize: 256)
    let q = driver.queues[0]
    // No call, err or kick descriptors: everything goes in-band.
    try frontend.setVringCall(0, nil)
    try frontend.setVringErr(0, nil)
    try frontend.setVringKick(0, nil)
    let p = try submit(driver, q, count: 4, seed: 30)
    try frontend.vringKick(0)
    try verify(driver, p, try collectUsed(q.ring, call: nil, count: 4))
    let channel = try #require(frontend.backendChannel)
    #expect(waitUntil { (channel.vringCalls[0] ?? 0) >= 1 }, "no BACKEND_VRING_CALL: \(channel.vringCalls)")
    let w = try driver.allocate(64)
    try q.ring.add([
      DriverBuffer(guestAddress: 0xbad_0000_0000, length: 8, deviceWritable: false),
      DriverBuffer(guestAddress: driver.memory.gpa(w), length: 64, deviceWritable: true),
    ])
    try frontend.vringKick(0)
    #expect(try collectUsed(q.ring, call: nil, count: 1).first?.length == 0)
    #expect(waitUntil { (channel.vringErrors[0] ?? 0) == 1 }, "BACKEND_VRING_ERR: \(channel.vringErrors)")
    #expect(channel.rejected.isEmpty)
  }
  @Test("SET_DEVICE_STATE_FD save and load through pipes, CHECK_DEVICE_STATE; the session is released afterwards")
  func deviceStateTransfer() throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 1))
    defer { backend.stop() }
    let device = backend.device
    let fdsBefore = settledDescriptorCount()
    let listingBefore = openDescriptors()
    weak var weakSession: BackendSession?
    do {
      let connection = try backend.connect()
      defer { connection.close() }
      let frontend = connection.device()
      let driver = try DeviceDriver(frontend: frontend, features: .version1, queueCount: 1, queueSize: 256)
      try echoChains(driver, driver.queues[0], count: 3, seed: 40)
      weakSession = backend.server.currentSession
      // Refused while a ring runs.
      let (_, busyWrite) = try makePipe()
      expectRefused("SET_DEVICE_STATE_FD with a running ring") {
        _ = try frontend.setDeviceStateFD(direction: .save, fd: busyWrite)
      }
      // Stop the ring (GET_VRING_BASE), as a front-end does before migrating.
      #expect(try frontend.getVringBase(0) == 3)
      // SET_DEVICE_STATE_FD save into a pipe, CHECK_DEVICE_STATE.
      let (saveRead, saveWrite) = try makePipe()
      let saved = try frontend.setDeviceStateFD(direction: .save, fd: saveWrite)
      #expect(saved.result & 0x100 != 0, "the back-end must say it chose no fd of its own")
      #expect(saved.backendFD == nil)
      #expect(readBytes(saveRead, count: device.savedState.count) == device.savedState)
      try frontend.checkDeviceState()
      // ... and load from one.
      let loadRead: OwnedFD
      do {
        let (r, w) = try makePipe()
        try writeBytes(w, device.savedState)
        loadRead = r
      }
      _ = try frontend.setDeviceStateFD(direction: .load, fd: loadRead)
      try frontend.checkDeviceState()
      #expect(device.loaded == device.savedState)
      // A state the device rejects fails the check.
      let garbageRead: OwnedFD
      do {
        let (r, w) = try makePipe()
        try writeBytes(w, [1, 2, 3])
        garbageRead = r
      }
      _ = try frontend.setDeviceStateFD(direction: .load, fd: garbageRead)
      expectRefused("CHECK_DEVICE_STATE after loading garbage") { try frontend.checkDeviceState() }
    }
    #expect(backend.waitIdle())
    do {
      #expect(waitUntil(timeout: 2) { weakSession == nil }, "the session outlives its connection")
      expectDescriptorCount(fdsBefore, before: listingBefore, timeout: 1)
    }
  }
}
