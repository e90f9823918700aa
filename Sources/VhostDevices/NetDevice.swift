import Synchronization
@_spi(Fuzzing) import VhostBackend
import VhostProtocol
import VhostSystem
import Virtqueue

/// virtio-net, device side: one port of a `NetSwitch` per vhost-user socket.
///
/// Queue 2n is receiveq n (device → driver), 2n+1 transmitq n (driver → device). Frames the driver
/// transmits are checked (header present, size within the MTU, checksum offsets inside the frame),
/// copied once out of guest memory and handed to the switch, which copies them into the
/// destination ports' queues of pending frames; a port's receive processing writes its pending
/// frames into the driver's receive buffers (one buffer per frame, or several with MRG_RXBUF).
/// Forwarding modes mirror DPDK testpmd's so benchmarks compare like with like: `rxonly` counts and
/// drops what the driver transmits; `txonly` fills every receive buffer with generated frames as
/// fast as the ring allows; `io` pairs ports; `switch` learns.
public final class NetDevice: VhostUserDevice, NetPort, @unchecked Sendable {
  public typealias Forwarding = NetSwitch.Forwarding
  public typealias PortCounters = NetCounters

  public let type = "net"
  public let netSwitch: NetSwitch
  public let pairs: Int
  public let mac: [UInt8]
  /// Largest MTU (`--mtu`); NET_SET_MTU may lower the port's MTU, never raise it above this.
  public let mtu: UInt16
  public let txFrameSize: Int
  public let portName: String
  public var forwarding: Forwarding { netSwitch.forwarding }

  private let currentMTU: Atomic<Int>
  private let ackedBits = Atomic<UInt64>(0)
  private let up = Atomic<Bool>(false)
  private let index = Atomic<Int>(-1)
  private let queueCounters: [CounterCell]
  private let reasons = ReasonCounts()
  private let segmentation = SegmentationCounts()
  let pending: FrameQueue
  /// The receive filter the driver set through the control queue.
  let filter: Locked<NetReceiveFilter>
  /// Receive queue pairs in use (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET).
  let activePairs: Atomic<Int>
  /// VIRTIO_NET_S_ANNOUNCE is set (SEND_RARP with GUEST_ANNOUNCE) and not yet acknowledged.
  let announcing = Atomic<Bool>(false)
  let controlCommands = Atomic<Int>(0)
  let controlErrors = Atomic<Int>(0)
  private let sessionLock = Lock()
  private weak var session: BackendSession?

  /// A device on a switch of its own (rxonly and txonly need no other port).
  public convenience init(
    forwarding: Forwarding = .rxonly, pairs: Int = 1, mac: [UInt8] = [0x52, 0x54, 0, 0x12, 0x34, 0x56],
    mtu: UInt16 = 1500, txFrameSize: Int = 64
  ) {
    let sw = NetSwitch(forwarding: forwarding, wakeReceivers: forwarding == .switch || forwarding == .io)
    self.init(switch: sw, name: "standalone", pairs: pairs, mac: mac, mtu: mtu, txFrameSize: txFrameSize)
  }

  /// A port of `sw`. `pendingFrames` bounds the frames waiting for this port's receive buffers.
  public init(
    switch sw: NetSwitch, name: String, pairs: Int = 1, mac: [UInt8] = [0x52, 0x54, 0, 0x12, 0x34, 0x56],
    mtu: UInt16 = 1500, txFrameSize: Int = 64, pendingFrames: Int = 1024
  ) {
    netSwitch = sw
    portName = name
    self.pairs = max(1, pairs)
    self.mac = mac.count == 6 ? mac : [0x52, 0x54, 0, 0x12, 0x34, 0x56]
    self.mtu = max(mtu, 68)
    self.txFrameSize = min(max(txFrameSize, Ethernet.headerLength), Ethernet.maxFrame(mtu: Int(max(mtu, 68))))
    currentMTU = Atomic(Int(max(mtu, 68)))
    queueCounters = (0..<(self.pairs * 2)).map { _ in CounterCell() }
    let maxFrame = Ethernet.maxFrame(mtu: Int(max(mtu, 68)))
    // At most ~16 MiB of pending frames per port: 12 MiB of slots (at least 64 frames) and 4 MiB for
    // GSO frames passed on whole.
    pending = FrameQueue(
      capacity: max(64, min(pendingFrames, (12 << 20) / (maxFrame + 64))), maxFrame: maxFrame,
      largeBytes: FrameQueue.defaultLargeBytes)
    filter = Locked(NetReceiveFilter(address: Self.mac48(self.mac)))
    activePairs = Atomic(self.pairs)
    sw.add(self)
  }

  // MARK: VhostUserDevice

  public var features: VirtioFeatures {
    var f: VirtioFeatures = [
      .version1, NetFeature.csum, NetFeature.guestCsum, NetFeature.mac, NetFeature.mrgRxbuf, NetFeature.status,
      NetFeature.mtu, NetFeature.ctrlVq, NetFeature.ctrlRx, NetFeature.ctrlMacAddr, NetFeature.guestAnnounce,
    ]
    if pairs > 1 { f.insert(NetFeature.mq) }
    // TSO in both directions where frames are forwarded (rxonly and txonly only count and generate).
    if forwarding == .switch || forwarding == .io {
      f.formUnion([
        NetFeature.hostTso4, NetFeature.hostTso6, NetFeature.hostEcn, NetFeature.guestTso4, NetFeature.guestTso6,
        NetFeature.guestEcn,
      ])
    }
    return f
  }
  public var extraProtocolFeatures: ProtocolFeatures { [.mtu, .rarp] }
  /// The receive/transmit pairs, then the control queue (used only by front-ends that hand it to
  /// the back-end; QEMU and DPDK's virtio_user serve it themselves).
  public var queueCount: Int { pairs * 2 + 1 }
  public var maxQueueSize: Int { 32768 }

  public func readConfig() -> [UInt8] {
    var w = ByteWriter()
    // The address the driver set with VIRTIO_NET_CTRL_MAC_ADDR_SET, else --mac.
    let address = filter.withLock { $0.address }
    w.write(bytes: (0..<6).map { UInt8(truncatingIfNeeded: address >> (8 * (5 - UInt64($0)))) })
    w.write(UInt16(announcing.load(ordering: .relaxed) ? 3 : 1))  // LINK_UP, ANNOUNCE
    // bounded: pairs is 1...Limits of the device (checked at init)
    w.write(UInt16(pairs))
    // bounded: the MTU is a UInt16 stored in an Int
    w.write(UInt16(currentMTU.load(ordering: .relaxed)))
    return w.bytes
  }

  public func featuresAcknowledged(_ features: VirtioFeatures) {
    ackedBits.store(features.rawValue, ordering: .releasing)
  }

  var acked: VirtioFeatures { VirtioFeatures(rawValue: ackedBits.load(ordering: .acquiring)) }

  /// virtio_net_hdr size for the acked features.
  var headerLength: Int { NetHeader.length(for: acked) }

  public func setMTU(_ mtu: UInt16) throws {
    guard mtu >= 68, mtu <= self.mtu else { throw DeviceError("MTU \(mtu) outside 68...\(self.mtu)") }
    currentMTU.store(Int(mtu), ordering: .relaxed)
  }

  /// The port's MTU now (NET_SET_MTU may have lowered it).
  public var portMTU: Int { currentMTU.load(ordering: .relaxed) }

  public func sendRARP(mac: [UInt8]) throws {
    guard mac.count == 6 else { throw DeviceError("SEND_RARP needs a 6-byte MAC") }
    netSwitch.announce(mac: mac, from: switchIndex)
    // A driver that can announce itself is asked to as well (VIRTIO_NET_S_ANNOUNCE in the status).
    let f = acked
    if f.contains(NetFeature.guestAnnounce) && f.contains(NetFeature.ctrlVq) {
      announcing.store(true, ordering: .relaxed)
      // The driver reads the status on a configuration-change interrupt. Posted, not sent here:
      // the front-end may answer it only after this request's reply (and a flood of SEND_RARP
      // coalesces into one message).
      sessionLock.withLock { session }?.postConfigChange()
    }
  }

  public func reset() {
    up.store(false, ordering: .releasing)
    ackedBits.store(0, ordering: .releasing)
    currentMTU.store(Int(mtu), ordering: .relaxed)
    filter.withLock { $0 = NetReceiveFilter(address: Self.mac48(mac)) }
    activePairs.store(pairs, ordering: .relaxed)
    announcing.store(false, ordering: .relaxed)
    pending.lock.withLock { pending.removeAll() }
    let i = switchIndex
    if i >= 0 { netSwitch.forget(port: i) }
  }

  public func process(_ queue: QueueHandle) {
    if queue.index == controlQueueIndex {
      control(queue)
      return
    }
    // Queue 2 × pairs is unused when the control queue sits at 2 (no MQ negotiated).
    guard queue.index < queueCounters.count else { return }
    if queue.index % 2 == 1 {
      transmit(queue)
    } else {
      receive(queue)
    }
  }

  public var capabilityFeatures: [String] { [] }

  // MARK: Serving

  /// A server for this port on `listener` that tells the port about each session (so frames
  /// queued for it from other ports can have its rings serviced).
  public func makeServer(listener: UnixListener, configuration: BackendConfiguration) -> BackendServer {
    let server = BackendServer(listener: listener, device: self, configuration: configuration)
    server.onSession = { [weak self] session in self?.attach(session) }
    return server
  }

  func attach(_ session: BackendSession) { sessionLock.withLock { self.session = session } }

  /// Services the session's rings once on the calling thread (the switch's waker). Each ring is
  /// serviced under its lock, exactly as its worker would.
  func serviceRings() {
    let s = sessionLock.withLock { session }
    s?.serviceQueuesOnce()
  }

  // MARK: NetPort

  public var switchIndex: Int { index.load(ordering: .relaxed) }
  public func attached(to sw: NetSwitch, index i: Int) { index.store(i, ordering: .relaxed) }
  public var isUp: Bool { up.load(ordering: .acquiring) }

  public func enqueue(header: NetHeader, frame buffer: PacketBuffer, _ frame: Range<Int>) -> NetDropReason? {
    if frame.count >= 6, !accepts(destination: buffer.u48be(at: frame.lowerBound)) {
      reasons.add(.filtered)
      return .filtered
    }
    var h = header
    if header.isGSO {
      guard let layout = GSOLayout.forwarded(header, buffer, frame) else {
        queueCounters[0].add(NetCounters(drops: 1))
        reasons.add(.badGSO)
        return .badGSO
      }
      guard GSOLayout.receivable(header.gsoType, features: acked) else {
        return enqueueSegments(buffer, frame, layout: layout)
      }
      h = layout.passThroughHeader(header)
    }
    let ok = pending.lock.withLock { pending.push(h, buffer, frame) }
    if ok { return nil }
    queueCounters[0].add(NetCounters(drops: 1))
    reasons.add(frame.count > pending.maxFrame && !h.isGSO ? .oversize : .rxQueueFull)
    return .rxQueueFull
  }

  /// Queues a GSO frame this port's driver cannot take whole as TCP segments (see `Segmenter`).
  /// Returns a reason when any segment was dropped (each is counted here).
  private func enqueueSegments(_ buffer: PacketBuffer, _ frame: Range<Int>, layout: GSOLayout) -> NetDropReason? {
    var dropped = 0
    var oversize = 0
    pending.lock.withLock {
      Segmenter.segment(buffer, frame, layout: layout) { h, b, range in
        if !pending.push(h, b, range) {
          dropped += 1
          if range.count > pending.maxFrame { oversize += 1 }
        }
      }
    }
    segmentation.add(frames: 1, segments: layout.segments)
    guard dropped > 0 else { return nil }
    queueCounters[0].add(NetCounters(drops: dropped))
    if oversize > 0 { reasons.add(.oversize, oversize) }
    if dropped > oversize { reasons.add(.rxQueueFull, dropped - oversize) }
    return oversize > 0 ? .oversize : .rxQueueFull
  }

  public func wakeReceiver() {
    guard let waker = netSwitch.waker else { return }
    waker.request(self)
  }

  // MARK: Counters

  /// Counters of queue `index`.
  public func counters(queue index: Int) -> PortCounters { queueCounters[index].value }

  /// Totals over transmit queues (what the driver sent us) and receive queues (what we delivered).
  public var received: PortCounters { total(odd: true) }
  public var delivered: PortCounters { total(odd: false) }

  func total(odd: Bool) -> PortCounters {
    var t = NetCounters()
    for (i, c) in queueCounters.enumerated() where (i % 2 == 1) == odd { t = t + c.value }
    return t
  }

  /// Drops and errors by reason.
  public var dropReasons: [NetDropReason: Int] { reasons.value }

  /// GSO frames for this port cut into segments (its driver did not take them whole).
  public var segmented: SegmentationCounters { segmentation.value }

  public func report() -> String {
    var lines: [String] = []
    for (i, c) in queueCounters.enumerated() {
      let v = c.value
      lines.append("  queue \(i) (\(i % 2 == 0 ? "rx" : "tx") \(i / 2)): \(v)")
    }
    let r = reasons.text
    if !r.isEmpty { lines.append("  dropped: \(r)") }
    let control = controlCounters
    if control.commands > 0 { lines.append("  control queue: \(control.commands) commands, \(control.errors) refused") }
    let g = segmentation.value
    if g.frames > 0 { lines.append("  \(g)") }
    return lines.joined(separator: "\n")
  }

  // MARK: Transmit (driver → device)

  /// The transmit path's copy buffer, kept per thread (a port's transmit queues may run on
  /// different workers).
  private static let gatherBuffers = ThreadLocal<PacketBuffer>()
  private func gatherBuffer(size: Int) -> PacketBuffer {
    if let b = Self.gatherBuffers.value, b.capacity >= size { return b }
    let b = PacketBuffer(capacity: max(size, 65536 + 64))
    Self.gatherBuffers.value = b
    return b
  }

  /// The driver's transmit queue: each chain is a virtio_net_hdr and a frame.
  func transmit(_ queue: QueueHandle) {
    let features = acked
    let hdr = NetHeader.length(for: features)
    let maxFrame = Ethernet.maxFrame(mtu: currentMTU.load(ordering: .relaxed))
    let mode = forwarding
    var c = NetCounters()
    var why: [NetDropReason: Int] = [:]
    var n = 0

    /// Size checks common to every mode; nil when the chain may hold a frame.
    func sizeProblem(_ length: Int) -> NetDropReason? {
      if length < hdr { return .missingHeader }
      if length - hdr < Ethernet.headerLength { return .runt }
      if length - hdr > maxFrame { return .oversize }
      return nil
    }

    if mode == .rxonly || mode == .txonly {
      // Counted and returned in bursts: one used-index update and one notification check each.
      queue.withBurstStorage { burst in
        while queue.nextBurst(&burst, limit: Self.burstSize) > 0 {
          for i in 0..<burst.count where !burst.isFailed(i) {
            let length = burst.readableLength(i)
            if let p = sizeProblem(length) {
              c.errors += 1
              why[p, default: 0] += 1
            } else {
              c.packets += 1
              c.bytes += length - hdr
            }
          }
          queue.completeBurst(&burst)
          queue.notifyIfNeeded()
        }
      }
      queueCounters[queue.index].add(c)
      reasons.add(why)
      return
    }

    // With TSO a frame may be up to 64 KiB; which limit applies is known once the header is read.
    let tso = !features.intersection([NetFeature.hostTso4, NetFeature.hostTso6]).isEmpty
    let limit = tso ? max(maxFrame, Ethernet.maxGSOFrame) : maxFrame
    var burst = netSwitch.burst(from: switchIndex)
    // One copy out of guest memory (gathering a header or frame split over descriptors);
    // everything below looks only at the copy, so the driver cannot change it under us.
    let buffer = gatherBuffer(size: hdr + limit)
    while let chain = queue.next() {
      let length = chain.readableLength
      let p: NetDropReason? =
        length < hdr
        ? .missingHeader : length - hdr < Ethernet.headerLength ? .runt : length - hdr > limit ? .oversize : nil
      if let p {
        queue.complete(chain, written: 0)
        c.errors += 1
        why[p, default: 0] += 1
        continue
      }
      var reader = chain.reader()
      var at = 0
      reader.withSegments(length) { memory, offset, count in
        if (try? buffer.read(from: memory, at: offset, count: count, to: at)) == nil {
          buffer.fill(0, at..<(at + count))
        }
        at += count
      }
      queue.complete(chain, written: 0)
      n += 1
      if n % 32 == 0 { queue.notifyIfNeeded() }
      let header = NetHeader(buffer, at: 0, length: hdr)
      let frame = hdr..<length
      if let p = header.problem(buffer: buffer, frame: frame, features: features, maxFrame: maxFrame) {
        c.errors += 1
        why[p, default: 0] += 1
        continue
      }
      c.packets += 1
      c.bytes += frame.count
      if let r = netSwitch.forward(&burst, header: header, frame: buffer, frame) {
        c.drops += 1
        why[r, default: 0] += 1
      }
    }
    queue.notifyIfNeeded()
    burst.finish()
    queueCounters[queue.index].add(c)
    reasons.add(why)
  }

  // MARK: Receive (device → driver)

  enum Delivery {
    case delivered
    case noBuffers
    case dropped(NetDropReason)
  }

  /// The driver's receive queue: writes the frames pending for this port (or, in txonly mode,
  /// generated frames) into its buffers.
  func receive(_ queue: QueueHandle) {
    up.store(true, ordering: .releasing)
    // Receive queues beyond the pairs the driver said it uses stay idle.
    guard queue.index / 2 < activePairs.load(ordering: .relaxed) else { return }
    if forwarding == .txonly {
      fillReceiveQueue(queue)
      return
    }
    guard pending.count.load(ordering: .acquiring) > 0 else { return }
    let features = acked
    let hdr = NetHeader.length(for: features)
    let mergeable = features.contains(NetFeature.mrgRxbuf)
    let guestCsum = features.contains(NetFeature.guestCsum)
    var c = NetCounters()
    var why: [NetDropReason: Int] = [:]
    var n = 0
    pending.lock.withLock {
      while let (header, storage, frame) = pending.front() {
        let length = frame.count
        var h = header
        if h.isGSO && !GSOLayout.receivable(h.gsoType, features: features) {
          // Queued whole under features since renegotiated: not for this driver.
          pending.popFront()
          c.drops += 1
          why[.unsupportedGSO, default: 0] += 1
          continue
        }
        if h.flags & NetHeader.needsCsum != 0 && !guestCsum {
          completeChecksum(storage, frame: frame, start: Int(h.csumStart), offset: Int(h.csumOffset))
          h = NetHeader()
        }
        h.flags &= NetHeader.needsCsum
        if !h.isGSO {
          h.gsoSize = 0
          h.hdrLen = 0
        }
        if h.flags == 0 {
          h.csumStart = 0
          h.csumOffset = 0
        }
        let outcome = deliver(
          header: h, packet: storage, (frame.lowerBound - hdr)..<frame.upperBound, headerLength: hdr,
          mergeable: mergeable, into: queue)
        if case .noBuffers = outcome { break }
        pending.popFront()
        switch outcome {
        case .delivered:
          c.packets += 1
          c.bytes += length
        case .dropped(let r):
          c.drops += 1
          why[r, default: 0] += 1
        case .noBuffers: break
        }
        n += 1
        if n % 32 == 0 { queue.notifyIfNeeded() }
      }
    }
    queue.notifyIfNeeded()
    queueCounters[queue.index].add(c)
    reasons.add(why)
  }

  /// Most receive buffers one frame may take (num_buffers).
  static let maxBuffersPerFrame = 256

  /// Writes one packet — `headerLength` bytes of room for the virtio-net header, then the frame —
  /// into one receive buffer, or into as many as it needs with MRG_RXBUF (num_buffers in the header).
  func deliver(
    header: NetHeader, packet buffer: PacketBuffer, _ packet: Range<Int>, headerLength hdr: Int, mergeable: Bool,
    into queue: QueueHandle
  ) -> Delivery {
    guard let first = queue.next() else { return .noBuffers }
    var h = header
    if first.writableLength >= packet.count {
      h.numBuffers = 1
      h.write(to: buffer, at: packet.lowerBound, length: hdr)
      var w = first.writer(log: queue.log)
      Self.scatter(buffer, packet, into: &w)
      queue.complete(first, written: w.written)
      return .delivered
    }
    guard mergeable else {
      queue.complete(first, written: 0)
      return .dropped(.rxBufferTooSmall)
    }
    var chains = [first]
    var capacity = first.writableLength
    while capacity < packet.count && chains.count < Self.maxBuffersPerFrame, let next = queue.next() {
      chains.append(next)
      capacity += next.writableLength
    }
    guard capacity >= packet.count else {
      // The buffers taken go back unused (length 0); the driver discards them.
      for chain in chains { queue.complete(chain, written: 0) }
      return .dropped(chains.count >= Self.maxBuffersPerFrame ? .rxBufferTooSmall : .rxRingExhausted)
    }
    // bounded: at most the ring's size (≤ 32768) chains per frame
    h.numBuffers = UInt16(chains.count)
    h.write(to: buffer, at: packet.lowerBound, length: hdr)
    var offset = packet.lowerBound
    var written: [Int] = []
    written.reserveCapacity(chains.count)
    for chain in chains {
      var w = chain.writer(log: queue.log)
      let take = min(chain.writableLength, packet.upperBound - offset)
      Self.scatter(buffer, offset..<(offset + take), into: &w)
      offset += take
      written.append(w.written)
    }
    for (chain, count) in zip(chains, written) { queue.complete(chain, written: count) }
    return .delivered
  }

  /// Copies `range` of `buffer` into the chain's writable buffers (as much as fits).
  static func scatter(_ buffer: PacketBuffer, _ range: Range<Int>, into w: inout ChainWriter) {
    var at = range.lowerBound
    w.withSegments(min(range.count, w.remaining)) { memory, offset, count in
      try? buffer.write(at..<(at + count), to: memory, at: offset)
      at += count
    }
  }

  /// Chains taken from a ring at a time in the burst paths (testpmd's default burst).
  static let burstSize = 32

  /// txonly's packets, header (num_buffers 1) then the generated broadcast frame: for a 10-byte
  /// and a 12-byte virtio-net header. Built once, only read afterwards.
  private lazy var txPackets: [PacketBuffer] = [10, 12].map { hdr in
    var h = NetHeader()
    h.numBuffers = 1
    var bytes = [UInt8](repeating: 0, count: hdr)
    bytes += [UInt8](repeating: 0xff, count: 6) + mac + [0x08, 0x00]
    bytes += [UInt8](repeating: 0x5a, count: max(0, txFrameSize - Ethernet.headerLength))
    let packet = PacketBuffer(capacity: bytes.count)
    packet.set(bytes, at: 0)
    h.write(to: packet, at: 0, length: hdr)
    return packet
  }
  private let txPacketsLock = Lock()

  /// The driver's receive queue in txonly mode: a header and a generated broadcast frame per
  /// buffer, in bursts. A buffer too small for the packet is returned empty and counted (a
  /// generator does not spread 64-byte frames over several buffers).
  func fillReceiveQueue(_ queue: QueueHandle) {
    let features = acked
    let hdr = NetHeader.length(for: features)
    let packet = txPacketsLock.withLock { txPackets[hdr == 10 ? 0 : 1] }
    let size = packet.capacity
    let log = queue.log
    var c = NetCounters()
    var tooSmall = 0
    queue.withBurstStorage { burst in
      while queue.nextBurst(&burst, limit: Self.burstSize) > 0 {
        for i in 0..<burst.count where !burst.isFailed(i) {
          guard burst.writableLength(i) >= size else {
            tooSmall += 1
            continue
          }
          burst.setWritten(i, burst.scatter(i, from: packet, 0..<size, log: log))
          c.packets += 1
          c.bytes += size - hdr
        }
        queue.completeBurst(&burst)
        queue.notifyIfNeeded()
      }
    }
    c.drops += tooSmall
    queueCounters[queue.index].add(c)
    if tooSmall > 0 { reasons.add(.rxBufferTooSmall, tooSmall) }
  }
}

/// A bounded FIFO of frames waiting for a port's receive buffers, in fixed slots of one buffer
/// allocated once. Each slot keeps `headroom` bytes before the frame so the virtio-net header can be
/// written in place and header + frame copied to the driver as one run. GSO frames larger than a
/// slot (passed on whole to a driver that takes them) take a slot for their place in the order and
/// their bytes go to a second buffer of `largeBytes`, used as a ring of variable-size runs. All
/// methods except `count` need `lock`.
final class FrameQueue: @unchecked Sendable {
  static let headroom = 12
  /// Room for 64 GSO frames of 64 KiB.
  static let defaultLargeBytes = 4 << 20
  let lock = Lock()
  let capacity: Int
  let maxFrame: Int
  let slotSize: Int
  /// The slots, one after the other.
  let storage: PacketBuffer
  /// Large frames (headroom, then the frame), allocated in order from a ring.
  let large: PacketBuffer
  private var lengths: [Int]
  private var headers: [NetHeader]
  /// Where a slot's frame is in `large` (headroom included), or -1 when it is in the slot.
  private var largeOffsets: [Int]
  /// The runs of `large` in use, oldest first.
  private var largeRuns: [Range<Int>] = []
  private var largeFirst = 0
  private var head = 0
  private var used = 0
  /// Frames queued (readable without the lock, to skip empty queues cheaply).
  let count = Atomic<Int>(0)

  init(capacity: Int, maxFrame: Int, largeBytes: Int = 0) {
    self.capacity = capacity
    self.maxFrame = maxFrame
    slotSize = (Self.headroom + maxFrame + 63) & ~63
    storage = PacketBuffer(capacity: capacity * slotSize)
    large = PacketBuffer(capacity: max(largeBytes, 1))
    lengths = Array(repeating: 0, count: capacity)
    headers = Array(repeating: NetHeader(), count: capacity)
    largeOffsets = Array(repeating: -1, count: capacity)
  }

  /// Copies a frame in; false when full (or the frame is too large: only GSO frames may be larger
  /// than `maxFrame`, up to `Ethernet.maxGSOFrame`).
  func push(_ header: NetHeader, _ buffer: PacketBuffer, _ frame: Range<Int>) -> Bool {
    guard used < capacity else { return false }
    let i = (head + used) % capacity
    if frame.count <= maxFrame {
      storage.copy(from: buffer, frame, to: i * slotSize + Self.headroom)
      largeOffsets[i] = -1
    } else {
      guard header.isGSO, frame.count <= Ethernet.maxGSOFrame, let at = allocateLarge(Self.headroom + frame.count)
      else { return false }
      large.copy(from: buffer, frame, to: at + Self.headroom)
      largeOffsets[i] = at
    }
    lengths[i] = frame.count
    headers[i] = header
    used += 1
    count.store(used, ordering: .releasing)
    return true
  }

  /// A run of `size` bytes of `large` after the newest run (or at the start, wrapping), not
  /// overlapping the runs in use; nil when there is no room.
  private func allocateLarge(_ size: Int) -> Int? {
    let size = (size + 63) & ~63
    let live = largeRuns.count - largeFirst
    var at: Int?
    if live == 0 {
      largeRuns.removeAll(keepingCapacity: true)
      largeFirst = 0
      at = size <= large.capacity ? 0 : nil
    } else {
      let oldest = largeRuns[largeFirst]
      let newest = largeRuns[largeRuns.count - 1]
      if newest.lowerBound >= oldest.lowerBound {
        // Not wrapped: free space after the newest run, then before the oldest.
        if newest.upperBound + size <= large.capacity {
          at = newest.upperBound
        } else if size <= oldest.lowerBound {
          at = 0
        }
      } else if newest.upperBound + size <= oldest.lowerBound {
        at = newest.upperBound
      }
    }
    guard let at else { return nil }
    largeRuns.append(at..<(at + size))
    return at
  }

  /// The oldest frame: its header, the buffer holding it and its range there (with `headroom`
  /// bytes before it that may be overwritten).
  func front() -> (NetHeader, PacketBuffer, Range<Int>)? {
    guard used > 0 else { return nil }
    let at = largeOffsets[head]
    let start = (at >= 0 ? at : head * slotSize) + Self.headroom
    return (headers[head], at >= 0 ? large : storage, start..<(start + lengths[head]))
  }

  func popFront() {
    guard used > 0 else { return }
    if largeOffsets[head] >= 0 {
      largeFirst += 1
      if largeFirst == largeRuns.count {
        largeRuns.removeAll(keepingCapacity: true)
        largeFirst = 0
      } else if largeFirst >= 64 {
        largeRuns.removeFirst(largeFirst)
        largeFirst = 0
      }
    }
    head = (head + 1) % capacity
    used -= 1
    count.store(used, ordering: .releasing)
  }

  func removeAll() {
    head = 0
    used = 0
    largeRuns.removeAll(keepingCapacity: true)
    largeFirst = 0
    count.store(0, ordering: .releasing)
  }
}
