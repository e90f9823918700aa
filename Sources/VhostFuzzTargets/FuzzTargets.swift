import Logging
@_spi(Fuzzing) import VhostBackend
import VhostDevices
@_spi(Fuzzing) import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTransport
import Virtqueue

#if canImport(Glibc)
  import Glibc
#endif

/// libFuzzer targets. Each takes arbitrary bytes and must neither trap, hang nor leak.
public enum FuzzTarget: String, CaseIterable, Sendable {
  /// (1) Header and body decoding on both channels.
  case decode
  /// (2) The back-end's state machine fed whole message sequences (with fake descriptors).
  case backend
  /// (3) The split-ring descriptor walker over a fuzzed guest memory image.
  case splitRing
  /// (4) The packed-ring descriptor walker over a fuzzed guest memory image.
  case packedRing
  /// (5) The front-end's reply validation and back-end channel handling.
  case frontend
  /// (6) The virtio-blk and virtio-net request parsers over fuzzed rings.
  case devices
  /// (7) Inflight areas with arbitrary contents replayed on a ring's start (split and packed).
  case inflight

  public func run(_ data: [UInt8]) {
    switch self {
    case .decode: FuzzDecode.run(data)
    case .backend: FuzzBackend.run(data)
    case .splitRing: FuzzRing.run(data, packed: false)
    case .packedRing: FuzzRing.run(data, packed: true)
    case .frontend: FuzzFrontend.run(data)
    case .devices: FuzzDevices.run(data)
    case .inflight: FuzzInflight.run(data)
    }
  }
}

/// Splits fuzz input into length-prefixed chunks.
struct FuzzInput {
  var bytes: [UInt8]
  var offset = 0
  init(_ bytes: [UInt8]) { self.bytes = bytes }
  var isEmpty: Bool { offset >= bytes.count }
  mutating func byte() -> UInt8 {
    guard offset < bytes.count else { return 0 }
    defer { offset += 1 }
    return bytes[offset]
  }
  mutating func u16() -> UInt16 { UInt16(byte()) | UInt16(byte()) << 8 }
  mutating func u64() -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(byte()) << (8 * UInt64($1)) } }
  mutating func take(_ n: Int) -> [UInt8] {
    let end = min(bytes.count, offset + max(0, n))
    defer { offset = end }
    return Array(bytes[offset..<end])
  }
}

enum FuzzDecode {
  static func run(_ data: [UInt8]) {
    guard data.count >= 13 else { return }
    let fdCount = Int(data[0] % 5)
    let header = Array(data[1..<13])
    let body = Array(data[13...])
    if let h = try? MessageHeader.decode(header), Int(h.size) == body.count {
      _ = try? FrontendMessage.decodeRequest(header: h, body: body, fdCount: fdCount)
      _ = try? BackendMessage.decodeRequest(header: h, body: body, fdCount: fdCount)
      _ = try? FrontendMessage.decodeReply(
        to: FrontendRequest(rawValue: h.request), header: h, body: body, fdCount: fdCount)
      _ = try? BackendMessage.decodeReply(
        to: BackendRequest(rawValue: h.request), header: h, body: body, fdCount: fdCount)
    }
    // Every layout over the raw body, whatever the header said.
    let layouts: [PayloadLayout] = [
      .u64, .u64OrEmpty, .vringState, .vringAddress, .memoryTable, .singleRegion, .log, .iotlb, .config, .vringArea,
      .inflight, .sharedObject, .deviceStateTransfer, .shmemMap, .shmemConfig,
    ]
    let layout = layouts[Int(data[0]) % layouts.count]
    if let p = try? Payload.decode(body, as: layout, request: "fuzz") {
      // Whatever decodes re-encodes to something that decodes to the same value.
      let again = try? Payload.decode(p.encoded(), as: layout, request: "fuzz")
      precondition(again == p, "re-encoding changed a payload")
    }
    _ = try? BlkConfig(bytes: body)
    _ = try? NetConfig(bytes: body)
  }
}

/// A device with one queue that echoes (the back-end state machine fuzzer serves it).
final class FuzzEchoDevice: VhostUserDevice, @unchecked Sendable {
  let type = "fuzz"
  var features: VirtioFeatures { .version1 }
  var queueCount: Int { 2 }
  func readConfig() -> [UInt8] { Array(repeating: 7, count: 16) }
  func process(_ queue: QueueHandle) {
    var n = 0
    while let chain = queue.next(), n < 64 {
      var r = chain.reader()
      let bytes = r.read(4096)
      var w = chain.writer(log: queue.log)
      w.write(bytes)
      queue.complete(chain, written: w.written)
      n += 1
    }
    queue.notifyIfNeeded()
  }
}

enum FuzzBackend {
  /// Guest memory the fuzzer's messages can name (a memfd 64 KiB long).
  static func fakeFD(kind: UInt8) -> OwnedFD? {
    switch kind % 4 {
    case 0: return (try? SharedMemory(anonymous: "fuzz", size: 65536))?.fd
    case 1: return (try? EventFD())?.fd
    case 2: return (try? UnixSocket.pair())?.0.fd
    default:
      // A pipe's read end whose writer is gone (a kick at end of file, a state transfer that ends).
      var fds: [Int32] = [-1, -1]
      guard pipe(&fds) == 0 else { return nil }
      _ = close(fds[1])
      return OwnedFD(taking: fds[0])
    }
  }

  static func run(_ data: [UInt8]) {
    guard let (mine, peer) = try? UnixSocket.pair() else { return }
    let session = BackendSession(
      device: FuzzEchoDevice(), socket: mine,
      configuration: {
        var c = BackendConfiguration()
        c.timeoutMilliseconds = 10
        // Refusals are the expected outcome of most inputs; logging each one would cost more than
        // the run itself (and fill the disk).
        c.logger.logLevel = .critical
        return c
      }())
    var input = FuzzInput(data)
    var messages = 0
    while !input.isEmpty && messages < 64 {
      messages += 1
      let code = UInt32(input.byte() % 48)
      let flagsByte = input.byte()
      let flags = HeaderFlags(rawValue: 1 | (flagsByte & 0x8 != 0 ? 0x8 : 0))
      let fdSpec = input.byte()
      let length = Int(input.u16() % 600)
      let body = input.take(length)
      var fds: [OwnedFD] = []
      for i in 0..<Int(fdSpec % 4) { if let fd = fakeFD(kind: fdSpec >> UInt8(2 + i)) { fds.append(fd) } }
      let raw = RawMessage(
        header: MessageHeader(request: code, flags: flags, size: UInt32(body.count)), body: body, fds: fds)
      let keep = session.handle(raw)
      session.serviceQueuesOnce()
      drain(peer)
      if !keep { break }
    }
  }

  /// Reads and drops whatever the session replied (so its sends never block).
  static func drain(_ socket: UnixSocket) {
    let channel = MessageChannel(socket: socket, timeoutMilliseconds: 0)
    while (try? channel.receiveRaw(waitMilliseconds: 0)) != nil {}
  }
}

/// The 64 KiB guest memory image the ring and device fuzzers run over: one memfd mapped once for the
/// whole run (a memfd and two mmaps per input cost more than the walk itself), overwritten with each
/// input and zero-filled after it, so every run starts from the input alone.
enum FuzzImage {
  static let size = 65536
  static let shared: (SharedMemory, GuestMemory)? = {
    guard let mem = try? SharedMemory(anonymous: "fuzz-image", size: size),
      let memory = try? GuestMemory().adding(
        MemoryRegion(guestPhysAddr: 0, memorySize: UInt64(size), userAddr: 0x10_0000, mmapOffset: 0), fd: mem.fd,
        limit: 8)
    else { return nil }
    return (mem, memory)
  }()
  /// The same memfd seen at the very top of both address spaces (guest-physical and front-end
  /// virtual): ring and buffer arithmetic near 2^64.
  static let high: GuestMemory? = {
    guard let (mem, _) = shared else { return nil }
    let top = UInt64.max - UInt64(size)
    return try? GuestMemory().adding(
      MemoryRegion(guestPhysAddr: top, memorySize: UInt64(size), userAddr: top, mmapOffset: 0), fd: mem.fd, limit: 8)
  }()
  /// A dirty log for 128 MiB of guest memory (4 KiB of bits); marks beyond it are ignored.
  static let log: DirtyLog? = (try? SharedMemory(anonymous: "fuzz-log", size: 4096)).map(DirtyLog.init)
  static let zeros = [UInt8](repeating: 0, count: size)

  static func load(_ mem: SharedMemory, _ bytes: [UInt8]) {
    let n = min(bytes.count, size)
    try? mem.write(bytes.prefix(n), at: 0)
    if n < size { try? mem.write(zeros[n...], at: UInt64(n)) }
  }
}

enum FuzzRing {
  /// Guest memory 64 KiB at GPA 0 filled with the input; ring geometry from the first bytes.
  static func run(_ data: [UInt8], packed: Bool) {
    guard data.count >= 8, let (mem, memory) = FuzzImage.shared else { return }
    FuzzImage.load(mem, data)
    var input = FuzzInput(data)
    let size = UInt16(1) << UInt16(input.byte() % 9)  // 1...256
    let desc = UInt64(input.u16() & 0xfff0)
    let avail = UInt64(input.u16() & 0xfffe)
    let used = UInt64(input.u16() & 0xfffc)
    let flags = input.byte()
    let base = VringBase(num: UInt32(input.u16()) | UInt32(input.u16()) << 16, packed: packed)
    // Byte 12: bit 0 maps the image at the top of the address spaces, bit 1 logs used-ring writes
    // at the log_guest_addr of bytes 13-20 (any 64-bit value) with LOG_ALL's dirty log on.
    let mode = input.byte()
    let logAddress = input.u64()
    let high = mode & 1 != 0
    let origin: UInt64 = high ? UInt64.max - UInt64(FuzzImage.size) : 0x10_0000
    guard let space = high ? FuzzImage.high : memory else { return }
    let config = RingConfiguration(
      size: size, desc: origin + desc, avail: origin + avail, used: origin + used, logUsed: mode & 2 != 0,
      logGuestAddr: logAddress, eventIndex: flags & 1 != 0, packed: packed, base: base)
    guard let ring = try? makeDeviceRing(config, memory: space) else { return }
    if mode & 2 != 0 { ring.log = FuzzImage.log }
    if flags & 2 != 0 {
      // The burst path: chains taken, echoed and completed a burst at a time.
      let buffer = PacketBuffer(capacity: 512)
      var burst = ChainBurst()
      for _ in 0..<16 {
        do {
          try ring.popBurst(into: &burst, limit: Int(flags >> 2) + 1)
        } catch {
          break
        }
        if burst.count == 0 && burst.errors.isEmpty { break }
        for i in 0..<burst.count where !burst.isFailed(i) {
          let n = burst.gather(i, count: burst.readableLength(i), into: buffer, at: 0)
          burst.setWritten(i, burst.scatter(i, from: buffer, 0..<n))
        }
        try? ring.pushBurst(burst)
        _ = ring.needsNotification()
      }
      _ = ring.base
      return
    }
    for _ in 0..<64 {
      guard let chain = try? ring.pop() else {
        if !ring.hasAvailable { break }
        continue
      }
      echo(chain, on: ring)
    }
    _ = ring.base
  }

  /// Echoes up to 512 readable bytes of `chain` into its writable part and completes it.
  static func echo(_ chain: DescriptorChain, on ring: DeviceRing) {
    var r = chain.reader()
    let bytes = r.read(512)
    var w = chain.writer(log: ring.log)
    w.write(bytes)
    try? ring.push(chain, length: UInt32(clamping: w.written))
    _ = ring.needsNotification()
  }
}

enum FuzzFrontend {
  static func run(_ data: [UInt8]) {
    guard data.count >= 14 else { return }
    let header = Array(data[2..<14])
    let body = Array(data[14...])
    let request = FrontendRequest(rawValue: UInt32(data[0] % 47))
    if let h = try? MessageHeader.decode(header) {
      let b = Array(body.prefix(Int(h.size)))
      _ = try? FrontendMessage.decodeReply(to: request, header: h, body: b, fdCount: Int(data[1] % 3))
      if let m = try? BackendMessage.decodeRequest(header: h, body: b, fdCount: 0),
        let (mine, _) = try? UnixSocket.pair()
      {
        _ = BackendChannelServer(socket: mine).handle(m)
      }
    }
  }
}

enum FuzzDevices {
  /// First byte: which device and queue; the rest is the guest memory image, as for the ring fuzzers.
  static func run(_ data: [UInt8]) {
    guard data.count >= 9, let (mem, memory) = FuzzImage.shared else { return }
    let which = data[0]
    let image = Array(data.dropFirst())
    FuzzImage.load(mem, image)
    var input = FuzzInput(image)
    let size = UInt16(1) << UInt16(input.byte() % 7)
    let config = RingConfiguration(
      size: size, desc: 0x10_0000 + UInt64(input.u16() & 0xfff0), avail: 0x10_0000 + UInt64(input.u16() & 0xfffe),
      used: 0x10_0000 + UInt64(input.u16() & 0xfffc), eventIndex: false, packed: false, base: VringBase(split: 0))
    guard let ring = try? makeDeviceRing(config, memory: memory) else { return }
    let queue = QueueHandle.standalone(index: Int(which % 2), ring: ring)
    if which & 2 == 0 {
      guard let blk = blkDevice else { return }
      blk.process(queue)
    } else if which & 4 == 0 {
      // rxonly's transmit queue, or txonly's receive queue (both burst paths).
      NetDevice(forwarding: which % 2 == 1 ? .rxonly : .txonly).process(queue)
    } else {
      // The switch path: port A transmits the image's chains (header checks, gathering), the
      // switch floods them to port B, whose receive queue (over the same ring, as the driver's
      // buffers) takes them (checksum completion, mergeable buffers, too-small buffers).
      guard let txRing = try? makeDeviceRing(config, memory: memory) else { return }
      let sw = NetSwitch(forwarding: .switch, wakeReceivers: false)
      // Bytes 8-9 of the image: the ports' MTU, anywhere from 68 to 65535.
      let rawMTU = input.u16()
      let mtu = rawMTU == 0 ? 1500 : UInt16(68) + rawMTU % (UInt16.max - 67)
      let a = NetDevice(switch: sw, name: "a", mtu: mtu)
      let b = NetDevice(switch: sw, name: "b", mtu: mtu)
      let offered = a.features
      let pick = VirtioFeatures(rawValue: UInt64(which >> 3) << 15 | UInt64(which >> 5 & 3))
      // The image's byte 7 picks TSO: bits 0-2 GUEST_TSO4/6, GUEST_ECN; bits 3-5 HOST_TSO4/6, HOST_ECN.
      let gso = input.byte()
      let tso = VirtioFeatures(rawValue: UInt64(gso & 7) << 7 | UInt64(gso >> 3 & 7) << 11)
      a.featuresAcknowledged(offered.intersection(pick.union(tso).union(.version1)))
      b.featuresAcknowledged(offered.intersection(pick.union(tso)))
      let rx = QueueHandle.standalone(index: 0, ring: ring)
      b.process(rx)  // B's receive ring runs: the port is up
      a.process(QueueHandle.standalone(index: 1, ring: txRing))
      b.process(rx)
      sw.shutdown()
    }
  }

  /// A 1 MiB disk in a memfd (opened again through /proc so BlockFile owns its own descriptor).
  static let disk = try? SharedMemory(anonymous: "fuzz-disk", size: 1 << 20)
  static let blkDevice: BlkDevice? = {
    guard let disk else { return nil }
    return try? BlkDevice(path: "/proc/self/fd/\(disk.fd.rawValue)", serial: "fuzz")
  }()
}

enum FuzzInflight {
  static let areaSize = InflightRegion.queueRegionSize(queueSize: 256)
  static let area = try? SharedMemory(anonymous: "fuzz-inflight", size: areaSize)

  /// Byte 0: bit 0 packed, bits 1-4 the ring size (1...256); then the inflight area (one queue's,
  /// 8256 bytes, as a previous back-end and the front-end left it); the rest is the guest memory
  /// image with the ring's geometry first, as for the ring fuzzers. The replay is the session's:
  /// recover, resubmit, resume, then serve what the ring has.
  static func run(_ data: [UInt8]) {
    guard data.count >= 16, let area, let (mem, memory) = FuzzImage.shared,
      let region = try? InflightRegion(memory: area, queueCount: 1, queueSize: 256)
    else { return }
    var input = FuzzInput(data)
    let mode = input.byte()
    let packed = mode & 1 != 0
    let size = UInt16(1) << UInt16((mode >> 1) % 9)
    let areaBytes = input.take(areaSize)
    try? area.write(areaBytes, at: 0)
    if areaBytes.count < areaSize { try? area.fill(0, at: UInt64(areaBytes.count), count: areaSize - areaBytes.count) }
    let image = Array(data[min(input.offset, data.count)...])
    FuzzImage.load(mem, image)
    // The image's header as the ring fuzzers read it (its size byte and flags are not used here).
    var ringInput = FuzzInput(image)
    _ = ringInput.byte()
    let desc = UInt64(ringInput.u16() & 0xfff0)
    let avail = UInt64(ringInput.u16() & 0xfffe)
    let used = UInt64(ringInput.u16() & 0xfffc)
    _ = ringInput.byte()
    let config = RingConfiguration(
      size: size, desc: 0x10_0000 + desc, avail: 0x10_0000 + avail, used: 0x10_0000 + used, eventIndex: false,
      packed: packed, base: VringBase(num: UInt32(ringInput.u16()) | UInt32(ringInput.u16()) << 16, packed: packed))
    guard let ring = try? makeDeviceRing(config, memory: memory) else { return }
    var resubmitted: [DescriptorChain] = []
    if let split = ring as? SplitDeviceRing, let tracker = region.queue(0, ringSize: size) {
      if tracker.isInitialized, case .pending(let heads) = tracker.recover(usedIndex: split.usedIndex, features: 0) {
        split.resume(afterResubmitting: heads.count)
        resubmitted = heads.compactMap { try? split.resubmit(head: $0) }
      } else if !tracker.isInitialized {
        tracker.initialize(features: 0, descNum: size, usedIndex: split.usedIndex)
      }
      split.inflight = tracker
    } else if let packedRing = ring as? PackedDeviceRing, let tracker = region.packedQueue(0, ringSize: size) {
      if tracker.isInitialized {
        if case .pending(let chains) = packedRing.replay(tracker, features: 0) { resubmitted = chains }
      } else {
        let position = packedRing.usedPosition
        tracker.initialize(features: 0, descNum: size, usedIndex: position.index, usedWrap: position.wrap)
      }
      packedRing.inflight = tracker
    }
    for chain in resubmitted { FuzzRing.echo(chain, on: ring) }
    for _ in 0..<64 {
      guard let chain = try? ring.pop() else {
        if !ring.hasAvailable { break }
        continue
      }
      FuzzRing.echo(chain, on: ring)
    }
    _ = ring.base
  }
}
