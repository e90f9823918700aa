import Dispatch
import VhostProtocol
import VhostSystem
import Virtqueue

/// A virtio-net driver on our front-end: transmits frames into any vhost-user-net back-end (ring 1)
/// and receives from it (ring 0), one descriptor per packet, as DPDK's virtio_user does.
public final class NetDriver: @unchecked Sendable {
  public let device: DeviceDriver
  public let rx: QueueDriver
  public let tx: QueueDriver
  /// virtio_net_hdr length: 12 with VERSION_1 or MRG_RXBUF, else 10.
  public let headerLength: Int
  let bufferSize: Int
  let txBuffers: [UInt64]
  let rxBuffers: [UInt64]
  public private(set) var sent = 0
  public private(set) var received = 0

  public static let defaultFeatures: VirtioFeatures = [.version1, VirtioFeatures(bit: 5) /* MAC */]

  public init(device: DeviceDriver, bufferSize: Int = 2048) throws(FrontendError) {
    self.device = device
    rx = device.queues[0]
    tx = device.queues[1]
    headerLength =
      device.ackedFeatures.contains(.version1) || device.ackedFeatures.contains(VirtioFeatures(bit: 15))
      ? 12 : 10
    self.bufferSize = bufferSize
    var t: [UInt64] = []
    for _ in 0..<Int(tx.ring.size) { t.append(try device.allocate(bufferSize)) }
    txBuffers = t
    var r: [UInt64] = []
    for _ in 0..<Int(rx.ring.size) { r.append(try device.allocate(bufferSize)) }
    rxBuffers = r
  }

  var mem: SharedMemory { device.memory.memory }

  /// Queues `frame` (a header of zeros is prepended) if a descriptor is free; returns false when
  /// the ring is full. Call `flush()` to kick.
  public func enqueue(_ frame: [UInt8]) throws(FrontendError) -> Bool {
    reclaimTx()
    guard tx.ring.freeDescriptors > 0 else { return false }
    guard frame.count + headerLength <= bufferSize else {
      throw .invalidArgument("frame of \(frame.count) bytes too big")
    }
    do {
      // One buffer per descriptor: the head we are about to use owns it.
      let buf = txBuffers[Int(tx.ring.nextHead)]
      try mem.fill(0, at: buf, count: headerLength)
      try mem.write(frame, at: buf + UInt64(headerLength))
      try tx.ring.add([
        DriverBuffer(
          // bounded: one frame, at most 64 KiB
          guestAddress: device.memory.gpa(buf), length: UInt32(headerLength + frame.count), deviceWritable: false)
      ])
    } catch {
      throw .invalidArgument("\(error)")
    }
    sent += 1
    return true
  }

  /// Kicks the tx ring if the back-end wants it.
  public func flush() throws(FrontendError) {
    do {
      try tx.notifyIfNeeded()
    } catch {
      throw .system(error)
    }
  }

  /// Sends `count` copies of `frame`, waiting for ring space as needed (up to `timeoutMilliseconds`
  /// without progress). Returns the number sent.
  public func send(_ frame: [UInt8], count: Int, timeoutMilliseconds: Int = 10_000) throws(FrontendError) -> Int {
    var done = 0
    var idleSince = Deadline.after(milliseconds: timeoutMilliseconds)
    while done < count {
      if try enqueue(frame) {
        done += 1
        idleSince = Deadline.after(milliseconds: timeoutMilliseconds)
        if done % 32 == 0 { try flush() }
      } else {
        try flush()
        if idleSince.remainingMilliseconds == 0 {
          throw .channel(.transport(.timeout("tx ring space (back-end not consuming)")))
        }
        if tx.call.wait(timeoutMilliseconds: 1) { tx.call.drain() }
      }
    }
    try flush()
    return done
  }

  /// What `generate` did.
  public struct GeneratorResult: Sendable {
    public var packets: Int
    public var bytes: Int
    public var seconds: Double
    public var kicks: Int
    public var packetsPerSecond: Double { seconds > 0 ? Double(packets) / seconds : 0 }
  }

  /// A packet generator (like testpmd's txonly): `frame` is written once behind a zero header into
  /// every transmit buffer, then for `seconds` every free descriptor is published again in bursts
  /// of up to `burst`, kicking only when the back-end asks for it. Counts frames the back-end consumed.
  public func generate(_ frame: [UInt8], seconds: Double, burst: Int = 32) throws(FrontendError) -> GeneratorResult {
    guard frame.count + headerLength <= bufferSize else {
      throw .invalidArgument("frame of \(frame.count) bytes too big")
    }
    // bounded: one frame, at most 64 KiB
    let length = UInt32(headerLength + frame.count)
    var addresses: [UInt64] = []
    do {
      for buf in txBuffers {
        try mem.fill(0, at: buf, count: headerLength)
        try mem.write(frame, at: buf + UInt64(headerLength))
        addresses.append(device.memory.gpa(buf))
      }
    } catch {
      throw .invalidArgument("\(error)")
    }
    _ = reclaimTx()
    var published = 0
    var completed = 0
    var kicks = 0
    let start = DispatchTime.now().uptimeNanoseconds
    let end = start + UInt64(max(0, seconds) * 1e9)
    var now = start
    var rounds = 0
    let ring = tx.ring
    let kick = tx.kick
    do {
      while now < end {
        completed += try ring.reclaimUsed()
        let n = try ring.addBurst(burst) { head in (addresses[Int(head)], length) }
        published += n
        if n > 0, ring.needsKick() {
          try kick.signal()
          kicks += 1
        }
        rounds += 1
        if rounds & 255 == 0 { now = DispatchTime.now().uptimeNanoseconds }
      }
    } catch let e as QueueError {
      throw .invalidArgument("\(e)")
    } catch let e as SystemError {
      throw .system(e)
    } catch {
      throw .invalidArgument("\(error)")
    }
    let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    sent += published
    return GeneratorResult(packets: completed, bytes: completed * frame.count, seconds: elapsed, kicks: kicks)
  }

  /// Returns completed tx descriptors to the free list.
  @discardableResult
  public func reclaimTx() -> Int { (try? tx.ring.reapUsed().count) ?? 0 }

  /// Waits until every transmitted frame was consumed by the back-end.
  public func drainTx(timeoutMilliseconds: Int = 10_000) throws(FrontendError) {
    let deadline = Deadline.after(milliseconds: timeoutMilliseconds)
    while tx.ring.freeDescriptors < Int(tx.ring.size) {
      reclaimTx()
      if deadline.remainingMilliseconds == 0 { throw .channel(.transport(.timeout("tx completions"))) }
      if tx.call.wait(timeoutMilliseconds: 5) { tx.call.drain() }
    }
  }

  /// Posts every free rx buffer to the back-end.
  public func refillRx() throws(FrontendError) {
    do {
      while rx.ring.freeDescriptors > 0 {
        let head = Int(rx.ring.nextHead)
        try rx.ring.add([
          DriverBuffer(
            // bounded: the caller's buffer size
            guestAddress: device.memory.gpa(rxBuffers[head]), length: UInt32(bufferSize), deviceWritable: true)
        ])
      }
      try rx.notifyIfNeeded()
    } catch {
      throw .invalidArgument("\(error)")
    }
  }

  /// Receives frames the back-end delivered (header stripped), waiting up to `timeoutMilliseconds`.
  public func receive(timeoutMilliseconds: Int) throws(FrontendError) -> [[UInt8]] {
    let used = try rx.waitUsed(timeoutMilliseconds: timeoutMilliseconds)
    var frames: [[UInt8]] = []
    for u in used {
      let len = Int(u.length)
      guard len >= headerLength, len <= bufferSize else { continue }
      // The buffer address was recorded in the descriptor the device completed.
      let desc = (try? mem.load(UInt64.self, at: rx.ring.descOffset + UInt64(u.head) * 16)) ?? 0
      let offset = desc &- device.memory.guestBase
      if let bytes = try? mem.read(at: offset + UInt64(headerLength), count: len - headerLength) {
        frames.append(bytes)
      }
    }
    received += frames.count
    try refillRx()
    return frames
  }
}
