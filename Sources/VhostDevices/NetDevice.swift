import VhostBackend
import VhostProtocol
import VhostSystem
import Virtqueue

/// virtio-net, device side. Forwarding modes mirror DPDK testpmd's so benchmarks compare like with
/// like: `rxonly` counts and drops what the driver transmits; `txonly` fills every receive buffer
/// with generated frames as fast as the ring allows.
public final class NetDevice: VhostUserDevice, @unchecked Sendable {
  public enum Forwarding: String, Sendable, CaseIterable { case rxonly, txonly }

  public let type = "net"
  public let forwarding: Forwarding
  public let pairs: Int
  public let mac: [UInt8]
  public let mtu: UInt16
  public let txFrameSize: Int
  private let lock = Lock()
  private var acked: VirtioFeatures = []
  private var counters: [PortCounters]

  /// Per-queue counters.
  public struct PortCounters: Sendable, Equatable {
    public var packets = 0
    public var bytes = 0
    public var drops = 0
    public var errors = 0
  }

  public init(
    forwarding: Forwarding = .rxonly, pairs: Int = 1, mac: [UInt8] = [0x52, 0x54, 0, 0x12, 0x34, 0x56],
    mtu: UInt16 = 1500, txFrameSize: Int = 64
  ) {
    self.forwarding = forwarding
    self.pairs = pairs
    self.mac = mac
    self.mtu = mtu
    self.txFrameSize = txFrameSize
    counters = Array(repeating: PortCounters(), count: pairs * 2)
  }

  public var features: VirtioFeatures {
    var f: VirtioFeatures = [
      .version1, VirtioFeatures(bit: 5) /* MAC */, VirtioFeatures(bit: 15) /* MRG_RXBUF */,
      VirtioFeatures(bit: 16) /* STATUS */, VirtioFeatures(bit: 3) /* MTU */,
    ]
    if pairs > 1 { f.insert(VirtioFeatures(bit: 22)) }  // MQ
    return f
  }
  public var extraProtocolFeatures: ProtocolFeatures { [.mtu, .rarp] }
  public var queueCount: Int { pairs * 2 }
  public var maxQueueSize: Int { 32768 }

  public func readConfig() -> [UInt8] {
    var w = ByteWriter()
    w.write(bytes: mac)
    w.write(UInt16(1))  // VIRTIO_NET_S_LINK_UP
    w.write(UInt16(pairs))
    w.write(mtu)
    return w.bytes
  }

  public func featuresAcknowledged(_ features: VirtioFeatures) { lock.withLock { acked = features } }

  /// virtio_net_hdr size for the acked features.
  var headerLength: Int {
    let f = lock.withLock { acked }
    return f.contains(.version1) || f.contains(VirtioFeatures(bit: 15)) ? 12 : 10
  }

  public func setMTU(_ mtu: UInt16) throws {
    guard mtu >= 68, mtu <= self.mtu else { throw DeviceError("MTU \(mtu) outside 68...\(self.mtu)") }
  }

  public func sendRARP(mac: [UInt8]) throws {}

  /// Counters of queue `index`.
  public func counters(queue index: Int) -> PortCounters { lock.withLock { counters[index] } }

  /// Totals over transmit queues (what the driver sent us) and receive queues (what we delivered).
  public var received: PortCounters { total(odd: true) }
  public var delivered: PortCounters { total(odd: false) }

  func total(odd: Bool) -> PortCounters {
    lock.withLock {
      var t = PortCounters()
      for (i, c) in counters.enumerated() where (i % 2 == 1) == odd {
        t.packets += c.packets
        t.bytes += c.bytes
        t.drops += c.drops
        t.errors += c.errors
      }
      return t
    }
  }

  public func reset() {}

  public func process(_ queue: QueueHandle) {
    if queue.index % 2 == 1 {
      transmitQueue(queue)
    } else if forwarding == .txonly {
      fillReceiveQueue(queue)
    }
  }

  /// The driver's transmit queue: each chain is a virtio_net_hdr and a frame.
  func transmitQueue(_ queue: QueueHandle) {
    let hdr = headerLength
    var c = PortCounters()
    var n = 0
    while let chain = queue.next() {
      let len = chain.readableLength
      if len < hdr || len - hdr > Int(mtu) + 14 + 4 {
        c.errors += 1
      } else {
        c.packets += 1
        c.bytes += len - hdr
      }
      queue.complete(chain, written: 0)
      n += 1
      if n % 32 == 0 { queue.notifyIfNeeded() }
    }
    queue.notifyIfNeeded()
    add(c, to: queue.index)
  }

  /// The driver's receive queue in txonly mode: a header and a generated frame per buffer.
  func fillReceiveQueue(_ queue: QueueHandle) {
    let hdr = headerLength
    var frame = [UInt8](repeating: 0, count: hdr)
    if hdr == 12 { frame[10] = 1 }  // num_buffers = 1
    frame += [UInt8](repeating: 0xff, count: 6) + mac + [0x08, 0x00]
    frame += [UInt8](repeating: 0x5a, count: max(0, txFrameSize - 14))
    var c = PortCounters()
    var n = 0
    while let chain = queue.next() {
      var w = chain.writer(log: queue.log)
      if chain.writableLength < frame.count {
        c.drops += 1
        queue.complete(chain, written: 0)
      } else {
        w.write(frame)
        queue.complete(chain, written: w.written)
        c.packets += 1
        c.bytes += frame.count - hdr
      }
      n += 1
      if n % 32 == 0 { queue.notifyIfNeeded() }
    }
    queue.notifyIfNeeded()
    add(c, to: queue.index)
  }

  func add(_ c: PortCounters, to index: Int) {
    guard c != PortCounters() else { return }
    lock.withLock {
      counters[index].packets += c.packets
      counters[index].bytes += c.bytes
      counters[index].drops += c.drops
      counters[index].errors += c.errors
    }
  }
}
