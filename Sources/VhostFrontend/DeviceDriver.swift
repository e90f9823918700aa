import VhostProtocol
import VhostSystem
import VhostTransport
import Virtqueue

/// Virtio device status bits (SET_STATUS).
public enum DeviceStatus {
  public static let acknowledge: UInt8 = 1
  public static let driver: UInt8 = 2
  public static let driverOK: UInt8 = 4
  public static let featuresOK: UInt8 = 8
  public static let needsReset: UInt8 = 64
  public static let failed: UInt8 = 128
}

/// A virtqueue the front-end drives itself: the ring in shared memory plus its kick and call eventfds.
public final class QueueDriver: @unchecked Sendable {
  public let index: UInt32
  public let ring: SplitDriverQueue
  public let kick: EventFD
  public let call: EventFD

  init(index: UInt32, ring: SplitDriverQueue) throws(SystemError) {
    self.index = index
    self.ring = ring
    kick = try EventFD()
    call = try EventFD()
  }

  /// Kicks the back-end if the ring asks for it (EVENT_IDX / NO_NOTIFY).
  public func notifyIfNeeded() throws(SystemError) {
    if ring.needsKick() { try kick.signal() }
  }

  /// Waits until at least one chain completes or `timeoutMilliseconds` pass.
  public func waitUsed(timeoutMilliseconds: Int) throws(FrontendError) -> [UsedElement] {
    let deadline = Deadline.after(milliseconds: timeoutMilliseconds)
    while true {
      let used: [UsedElement]
      do {
        used = try ring.reapUsed()
      } catch {
        throw .invalidReply(request: "used ring", reason: error.description)
      }
      if !used.isEmpty { return used }
      let left = deadline.remainingMilliseconds
      if left == 0 { throw .channel(.transport(.timeout("used buffers on queue \(index)"))) }
      if call.wait(timeoutMilliseconds: min(left, 50)) { call.drain() }
    }
  }
}

/// Brings a device up the way QEMU's vhost does: SET_OWNER, SET_FEATURES, the memory table, then for
/// each ring SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL, and
/// SET_VRING_ENABLE when virtio bit 30 is in use.
public final class DeviceDriver: @unchecked Sendable {
  public let frontend: VhostUserFrontend
  public let memory: DriverMemory
  public private(set) var queues: [QueueDriver] = []
  public let ackedFeatures: VirtioFeatures

  /// Negotiates (if not done yet), acknowledges `features` and starts `queueCount` rings of `queueSize`.
  public init(
    frontend: VhostUserFrontend, features wanted: VirtioFeatures, queueCount: Int, queueSize: UInt16,
    memorySize: Int = 16 << 20, preferMemorySlots: Bool = false
  ) throws(FrontendError) {
    self.frontend = frontend
    if frontend.state.backendFeatures.isEmpty { try frontend.negotiate() }
    try frontend.setOwner()
    ackedFeatures = try frontend.setFeatures(wanted)
    let status = frontend.state.protocolFeatures.contains(.status)
    if status { try frontend.setStatus(DeviceStatus.acknowledge | DeviceStatus.driver | DeviceStatus.featuresOK) }
    do {
      memory = try DriverMemory(size: memorySize)
    } catch {
      throw .system(error)
    }
    try frontend.setMemTable(
      [GuestRegion(memory.memory, guestPhysAddr: memory.guestBase)], preferSlots: preferMemorySlots)
    let eventIdx = ackedFeatures.contains(.eventIdx)
    // bounded: the caller's queue count
    for i in 0..<UInt32(queueCount) {
      let q: QueueDriver
      do {
        q = try QueueDriver(index: i, ring: try SplitDriverQueue(size: queueSize, in: memory, eventIndex: eventIdx))
      } catch let error as SystemError {
        throw .system(error)
      } catch {
        throw .invalidArgument("\(error)")
      }
      // bounded: UInt16 widens
      try frontend.setVringNum(i, UInt32(queueSize))
      try frontend.setVringBase(i, 0)
      try frontend.setVringAddr(
        VringAddress(index: i, desc: q.ring.descUserAddr, used: q.ring.usedUserAddr, avail: q.ring.availUserAddr))
      try frontend.setVringKick(i, q.kick.fd)
      try frontend.setVringCall(i, q.call.fd)
      queues.append(q)
    }
    if frontend.state.protocolFeaturesEnabled {
      // bounded: the caller's queue count
      for i in 0..<UInt32(queueCount) { try frontend.setVringEnable(i, true) }
    }
    if status {
      try frontend.setStatus(
        DeviceStatus.acknowledge | DeviceStatus.driver | DeviceStatus.featuresOK | DeviceStatus.driverOK)
    }
  }

  /// Allocates a buffer in shared memory; returns its offset.
  public func allocate(_ length: Int, alignment: Int = 64) throws(FrontendError) -> UInt64 {
    do {
      return try memory.allocate(length, alignment: alignment)
    } catch {
      throw .invalidArgument(error.description)
    }
  }

  /// Stops every ring (GET_VRING_BASE) and returns where each stopped.
  public func stop() throws(FrontendError) -> [UInt32] {
    var bases: [UInt32] = []
    for q in queues { bases.append(try frontend.getVringBase(q.index)) }
    return bases
  }
}
