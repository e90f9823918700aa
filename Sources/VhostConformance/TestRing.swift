import VhostFrontend
import VhostProtocol
import VhostSystem
import Virtqueue

/// A split virtqueue the checker drives itself (no EVENT_IDX, always kicking), which can start at
/// any index: its avail and used indices both begin at `startIndex`, as a ring stopped there with
/// everything completed would be. Each request uses its own slot of up to 4 descriptors and 4 KiB
/// of buffer space, so requests never share memory.
final class TestRing {
  let index: UInt32
  let size: UInt16
  let startIndex: UInt16
  let memory: DriverMemory
  let descOffset: UInt64
  let availOffset: UInt64
  let usedOffset: UInt64
  let bufferOffset: UInt64
  let kick: EventFD
  let call: EventFD
  private(set) var availIdx: UInt16
  private(set) var lastUsed: UInt16
  /// Heads published and not yet completed.
  private var outstanding: Set<UInt16> = []
  static let slotBytes = 4096

  var slots: Int { Int(size) / 4 }

  init(index: UInt32, size: UInt16 = 128, startIndex: UInt16 = 0, in memory: DriverMemory) throws(CheckFailure) {
    precondition(size >= 4 && size & (size - 1) == 0)
    self.index = index
    self.size = size
    self.startIndex = startIndex
    self.memory = memory
    let n = Int(size)
    do {
      descOffset = try memory.allocate(16 * n, alignment: 16)
      availOffset = try memory.allocate(6 + 2 * n, alignment: 2)
      usedOffset = try memory.allocate(6 + 8 * n, alignment: 4)
      bufferOffset = try memory.allocate(n / 4 * Self.slotBytes, alignment: 4096)
      let m = memory.memory
      try m.fill(0, at: descOffset, count: 16 * n)
      try m.fill(0, at: availOffset, count: 6 + 2 * n)
      try m.fill(0, at: usedOffset, count: 6 + 8 * n)
      try m.store(startIndex, at: availOffset + 2)
      try m.store(startIndex, at: usedOffset + 2)
      kick = try EventFD()
      call = try EventFD()
    } catch {
      throw CheckFailure("setting up ring \(index) in the checker's memory failed: \(error)")
    }
    availIdx = startIndex
    lastUsed = startIndex
  }

  /// SET_VRING_ADDR payload (user addresses of this process's mapping).
  var address: VringAddress {
    VringAddress(
      index: index, desc: memory.uva(descOffset), used: memory.uva(usedOffset), avail: memory.uva(availOffset))
  }

  /// Offset of the buffer area of the request published at avail index `position`.
  func buffer(forPosition position: UInt16) -> UInt64 {
    bufferOffset + UInt64(Int(position) % slots * Self.slotBytes)
  }

  /// Offset of the buffer area the next published request will use.
  var nextBuffer: UInt64 { buffer(forPosition: availIdx) }

  /// Publishes a chain (offsets into the driver memory) at the next avail index; returns the head.
  @discardableResult
  func publish(_ parts: [(offset: UInt64, length: UInt32, writable: Bool)]) throws(CheckFailure) -> UInt16 {
    precondition(!parts.isEmpty && parts.count <= 4)
    let m = memory.memory
    let slot = UInt16(Int(availIdx) % slots)
    let head = slot * 4
    guard !outstanding.contains(head) else { throw CheckFailure("ring \(index): slot \(slot) still in flight") }
    do {
      for (i, p) in parts.enumerated() {
        let d = head + UInt16(i)
        let at = descOffset + UInt64(d) * 16
        let last = i == parts.count - 1
        var flags: UInt16 = p.writable ? SplitDescriptorFlags.write : 0
        if !last { flags |= SplitDescriptorFlags.next }
        try m.store(memory.gpa(p.offset), at: at)
        try m.store(p.length, at: at + 8)
        try m.store(flags, at: at + 12)
        try m.store(last ? UInt16(0) : d + 1, at: at + 14)
      }
      try m.store(head, at: availOffset + 4 + UInt64(availIdx % size) * 2)
      availIdx &+= 1
      try m.storeRelease16(availIdx, at: availOffset + 2)
    } catch {
      throw CheckFailure("ring \(index): writing the request failed: \(error)")
    }
    outstanding.insert(head)
    return head
  }

  /// Signals the kick eventfd.
  func notify() {
    SharedMemory.fullFence()
    try? kick.signal()
  }

  /// The used index as the device last wrote it.
  var deviceUsedIndex: UInt16 { (try? memory.memory.loadAcquire16(at: usedOffset + 2)) ?? lastUsed }

  /// Collects completed chains; an id that is not an outstanding head is a deviation.
  func reap() throws(CheckFailure) -> [Completion] {
    let m = memory.memory
    let usedIdx = deviceUsedIndex
    let pending = usedIdx &- lastUsed
    guard pending <= size else {
      throw CheckFailure("ring \(index): used index jumped from \(lastUsed) to \(usedIdx)")
    }
    var out: [Completion] = []
    while lastUsed != usedIdx {
      let at = usedOffset + 4 + UInt64(lastUsed % size) * 8
      let id = (try? m.load(UInt32.self, at: at)) ?? UInt32.max
      let len = (try? m.load(UInt32.self, at: at + 4)) ?? 0
      guard id < UInt32(size), outstanding.contains(UInt16(id)) else {
        throw CheckFailure(
          "ring \(index): used entry \(lastUsed) names descriptor \(id), which is not an outstanding request")
      }
      outstanding.remove(UInt16(id))
      out.append(Completion(head: UInt16(id), length: len))
      lastUsed &+= 1
    }
    return out
  }

  /// Waits until `count` chains completed (or `milliseconds` pass); returns what completed.
  func waitCompletions(_ count: Int, milliseconds: Int) throws(CheckFailure) -> [Completion] {
    let deadline = Deadline.after(milliseconds: milliseconds)
    var got: [Completion] = []
    while true {
      got += try reap()
      if got.count >= count { return got }
      let left = deadline.remainingMilliseconds
      if left == 0 { return got }
      if call.wait(timeoutMilliseconds: min(left, 10)) { call.drain() }
    }
  }

  var outstandingCount: Int { outstanding.count }
}

/// A completed chain as the used ring reports it.
struct Completion {
  var head: UInt16
  var length: UInt32
}

/// The requests the checker issues to see a ring work, per device type: a blk read of sector 0, a
/// net frame on the transmit ring, an rng buffer to fill.
struct Workload {
  let device: VirtioDeviceType
  /// virtio_net_hdr length (12 with VERSION_1 or MRG_RXBUF, else 10).
  var netHeaderLength = 12

  /// The rings the device needs set up (net: receive 0 and transmit 1, as DPDK needs both).
  var rings: [UInt32] { device == .net ? [0, 1] : [0] }
  /// The ring requests go to.
  var dataRing: UInt32 { device == .net ? 1 : 0 }

  var what: String {
    switch device {
    case .blk: "a virtio-blk read of sector 0"
    case .net: "a 64-byte frame on the transmit ring"
    case .rng: "a 64-byte entropy request"
    }
  }

  /// Publishes one request on `ring` (does not kick).
  func submit(on ring: TestRing) throws(CheckFailure) {
    let b = ring.nextBuffer
    let m = ring.memory.memory
    do {
      switch device {
      case .blk:
        try m.store(UInt32(0), at: b)  // VIRTIO_BLK_T_IN
        try m.store(UInt32(0), at: b + 4)
        try m.store(UInt64(0), at: b + 8)  // sector
        try m.store(UInt8(0xff), at: b + 16)  // status, overwritten by the device
        try ring.publish([(b, 16, false), (b + 512, 512, true), (b + 16, 1, true)])
      case .net:
        var frame = [UInt8](repeating: 0, count: netHeaderLength)
        frame += [UInt8](repeating: 0xff, count: 6) + [0x02, 0, 0, 0, 0, 1] + [0x08, 0x00]
        frame += (0..<50).map { UInt8($0) }
        try m.write(frame, at: b)
        try ring.publish([(b, UInt32(frame.count), false)])
      case .rng:
        try m.fill(0, at: b, count: 64)
        try ring.publish([(b, 64, true)])
      }
    } catch let e as CheckFailure {
      throw e
    } catch {
      throw CheckFailure("writing the request failed: \(error)")
    }
  }

  /// Why a completion is wrong, or nil.
  func problem(with used: Completion, on ring: TestRing) -> String? {
    // Heads are slot * 4; the slot's buffer holds the request.
    let b = ring.bufferOffset + UInt64(Int(used.head / 4) * TestRing.slotBytes)
    switch device {
    case .blk:
      let status = (try? ring.memory.memory.load(UInt8.self, at: b + 16)) ?? 0xff
      if status != 0 { return "the read completed with virtio-blk status \(status) (0 = OK, 0xff = not written)" }
      if used.length < 1 { return "used length \(used.length): the status byte was not counted" }
      return nil
    case .net:
      return nil
    case .rng:
      if used.length == 0 || used.length > 64 { return "used length \(used.length) for a 64-byte buffer" }
      return nil
    }
  }

  /// Submits `count` requests one after another, kicking each, and waits for each to complete
  /// correctly. Returns a failure description, or nil.
  func run(_ count: Int, on ring: TestRing, timeout: Int) throws(CheckFailure) {
    for i in 0..<count {
      try submit(on: ring)
      ring.notify()
      let done = try ring.waitCompletions(1, milliseconds: timeout)
      guard let u = done.first else {
        throw CheckFailure(
          "\(what) (#\(i + 1), avail index \(ring.availIdx &- 1)) did not complete within \(timeout) ms")
      }
      if let p = problem(with: u, on: ring) { throw CheckFailure(p) }
    }
  }
}
