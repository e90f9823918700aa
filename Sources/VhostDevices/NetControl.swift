import Synchronization
import VhostBackend
import VhostProtocol
import VhostSystem
import Virtqueue

/// A port's receive filter, as the driver sets it through the control queue (VIRTIO_NET_F_CTRL_RX,
/// MAC table, CTRL_MAC_ADDR). Until a driver says otherwise the port is promiscuous, as QEMU's own
/// virtio-net is after a reset, so drivers that never use the control queue see every frame.
struct NetReceiveFilter: Sendable {
  var promiscuous = true
  var allMulticast = false
  /// The port's own address (VIRTIO_NET_CTRL_MAC_ADDR_SET may change it).
  var address: UInt64
  var unicast: Set<UInt64> = []
  var multicast: Set<UInt64> = []

  init(address: UInt64) { self.address = address }

  /// Whether a frame for destination `dst` (48 bits, big-endian) is received.
  func accepts(_ dst: UInt64) -> Bool {
    if promiscuous { return true }
    let group = dst >> 40 & 1 != 0
    if dst == 0xffff_ffff_ffff { return true }
    if group { return allMulticast || multicast.contains(dst) }
    return dst == address || unicast.contains(dst)
  }
}

/// The control virtqueue's commands (virtio spec 5.1.6.5): class, command, then data.
enum NetControlCommand {
  static let classRx: UInt8 = 0
  static let rxPromisc: UInt8 = 0
  static let rxAllMulti: UInt8 = 1
  static let classMAC: UInt8 = 1
  static let macTableSet: UInt8 = 0
  static let macAddrSet: UInt8 = 1
  static let classAnnounce: UInt8 = 3
  static let announceAck: UInt8 = 0
  static let classMQ: UInt8 = 4
  static let mqPairsSet: UInt8 = 0
  /// Acknowledgement byte values.
  static let ok: UInt8 = 0
  static let err: UInt8 = 1
  /// Most MAC table entries accepted per list (a bound on what a driver can make us store).
  static let macTableLimit = 256
}

extension NetDevice {
  /// The control virtqueue's index: after every receive/transmit pair with VIRTIO_NET_F_MQ,
  /// else after the first pair (virtio 1.2 §5.1.2).
  var controlQueueIndex: Int { acked.contains(NetFeature.mq) ? pairs * 2 : 2 }

  /// Serves the control queue: each chain is a command (class, command, data; device-readable)
  /// and one device-writable acknowledgement byte. Malformed commands are answered ERR.
  func control(_ queue: QueueHandle) {
    while let chain = queue.next() {
      var reader = chain.reader()
      let command = reader.read(min(reader.remaining, 8 + 2 * (4 + 6 * NetControlCommand.macTableLimit)))
      // A command without room for its acknowledgement is malformed: not executed.
      let ack = chain.writableLength >= 1 ? executeControlCommand(command) : NetControlCommand.err
      var written = 0
      if chain.writableLength >= 1 {
        var w = chain.writer(log: queue.log)
        written = w.write([ack])
      }
      queue.complete(chain, written: written)
      controlCommands.add(1, ordering: .relaxed)
      if ack != NetControlCommand.ok { controlErrors.add(1, ordering: .relaxed) }
    }
    queue.notifyIfNeeded()
  }

  /// Applies one control command (class, command, data: what a control-queue chain carries) and
  /// returns the acknowledgement byte (VIRTIO_NET_OK 0, VIRTIO_NET_ERR 1).
  public func executeControlCommand(_ command: [UInt8]) -> UInt8 {
    guard command.count >= 2 else { return NetControlCommand.err }
    let features = acked
    let data = Array(command[2...])
    var r = ByteReader(data)
    switch (command[0], command[1]) {
    case (NetControlCommand.classRx, NetControlCommand.rxPromisc),
      (NetControlCommand.classRx, NetControlCommand.rxAllMulti):
      guard features.contains(NetFeature.ctrlRx), data.count == 1 else { return NetControlCommand.err }
      let on = data[0] != 0
      filter.withLock {
        if command[1] == NetControlCommand.rxPromisc { $0.promiscuous = on } else { $0.allMulticast = on }
      }
    case (NetControlCommand.classMAC, NetControlCommand.macTableSet):
      // Two tables (unicast, then multicast): le32 entries, then 6 bytes per entry.
      guard features.contains(NetFeature.ctrlRx) else { return NetControlCommand.err }
      var tables: [Set<UInt64>] = []
      for _ in 0..<2 {
        guard let n = try? r.read(UInt32.self), n <= NetControlCommand.macTableLimit,
          let bytes = try? r.read(count: Int(n) * 6)
        else { return NetControlCommand.err }
        tables.append(Set((0..<Int(n)).map { Self.mac48(Array(bytes[($0 * 6)..<($0 * 6 + 6)])) }))
      }
      guard r.remaining == 0 else { return NetControlCommand.err }
      filter.withLock {
        $0.unicast = tables[0]
        $0.multicast = tables[1]
      }
    case (NetControlCommand.classMAC, NetControlCommand.macAddrSet):
      guard features.contains(NetFeature.ctrlMacAddr), data.count == 6, data[0] & 1 == 0 else {
        return NetControlCommand.err
      }
      filter.withLock { $0.address = Self.mac48(data) }
    case (NetControlCommand.classAnnounce, NetControlCommand.announceAck):
      guard features.contains(NetFeature.guestAnnounce), data.isEmpty else { return NetControlCommand.err }
      announcing.store(false, ordering: .relaxed)
    case (NetControlCommand.classMQ, NetControlCommand.mqPairsSet):
      guard features.contains(NetFeature.mq), let n = try? r.read(UInt16.self), r.remaining == 0, n >= 1,
        Int(n) <= pairs
      else { return NetControlCommand.err }
      activePairs.store(Int(n), ordering: .relaxed)
    default:
      return NetControlCommand.err
    }
    return NetControlCommand.ok
  }

  /// Six address bytes as a 48-bit number (big-endian, as `PacketBuffer.u48be` reads them).
  static func mac48(_ b: [UInt8]) -> UInt64 { b.prefix(6).reduce(0) { $0 << 8 | UInt64($1) } }

  /// Whether the port's receive filter takes a frame for `dst`.
  func accepts(destination dst: UInt64) -> Bool { filter.withLock { $0.accepts(dst) } }

  /// Commands served on the control queue, and how many were refused (ERR).
  public var controlCounters: (commands: Int, errors: Int) {
    (controlCommands.load(ordering: .relaxed), controlErrors.load(ordering: .relaxed))
  }

  /// Receive queue pairs in use (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET; all of them until set).
  public var queuePairsInUse: Int { activePairs.load(ordering: .relaxed) }

  /// Whether the device asks the driver to announce itself (VIRTIO_NET_S_ANNOUNCE, until
  /// VIRTIO_NET_CTRL_ANNOUNCE_ACK).
  public var announceRequested: Bool { announcing.load(ordering: .relaxed) }
}
