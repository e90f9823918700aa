import VhostProtocol

/// Seed inputs for each fuzz target, built with the project's own encoders (committed under
/// Fuzz/corpus/TARGET by `vhost-fuzz --write-seeds Fuzz/corpus`).
extension FuzzTarget {
  public var seeds: [[UInt8]] {
    switch self {
    case .decode: Seeds.decode
    case .backend: Seeds.backendSession
    case .splitRing: [Seeds.splitRingImage(blk: false)]
    case .packedRing: [Seeds.packedRingImage()]
    case .frontend: Seeds.frontend
    case .devices:
      [
        [0] + Seeds.splitRingImage(blk: true), [2] + Seeds.splitRingImage(blk: false),
        [0x07] + Seeds.splitRingImage(blk: false), [0x0f] + Seeds.splitRingImage(blk: false),
        // A TSO frame through the switch (CSUM, GUEST_CSUM, MRG_RXBUF): cut into segments for B,
        // then passed whole to B.
        [0x6e] + Seeds.netGSOImage(guestTSO: false), [0x6e] + Seeds.netGSOImage(guestTSO: true),
      ]
    case .inflight:
      // Rings of 8 whose areas each record one request in flight, before the ring images above.
      [[6] + Seeds.inflightArea(packed: false) + Seeds.splitRingImage(blk: false)]
        + [[7] + Seeds.inflightArea(packed: true) + Seeds.packedRingImage()]
    }
  }
}

enum Seeds {
  /// One queue's inflight area (as `FuzzInflight` reads it) for a ring of 8 with the chain at
  /// descriptor/slot 0 in flight.
  static func inflightArea(packed: Bool) -> [UInt8] {
    var m = [UInt8](repeating: 0, count: 8256)
    func put<T: FixedWidthInteger>(_ v: T, _ at: Int) {
      withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { m[at + i] = b } }
    }
    put(UInt16(1), 8)  // version
    put(UInt16(8), 10)  // desc_num
    if packed {
      put(UInt8(1), 20)  // used_wrap_counter
      put(UInt8(1), 32)  // slot 0: inflight
      put(UInt16(1), 32 + 2)  // next
      put(UInt16(1), 32 + 6)  // num
      put(UInt64(5), 32 + 8)  // counter
      put(UInt32(16), 32 + 20)  // len
      put(UInt64(0x800), 32 + 24)  // addr
    } else {
      put(UInt8(1), 16)  // descriptor 0: inflight
      put(UInt64(5), 16 + 8)  // counter
    }
    return m
  }

  static func sample(_ layout: PayloadLayout) -> Payload {
    switch layout {
    case .empty, .opaque: .empty
    case .u64, .u64OrEmpty: .u64(0x1_4000_0000)
    case .vringState: .vringState(VringState(index: 0, num: 256))
    case .vringAddress: .vringAddress(VringAddress(index: 0, desc: 0x10_0000, used: 0x10_2000, avail: 0x10_1000))
    case .memoryTable:
      .memoryTable(
        MemoryTable(regions: [
          MemoryRegion(guestPhysAddr: 0, memorySize: 65536, userAddr: 0x10_0000, mmapOffset: 0)
        ]))
    case .singleRegion:
      .singleRegion(
        SingleMemoryRegion(MemoryRegion(guestPhysAddr: 0, memorySize: 65536, userAddr: 0x10_0000, mmapOffset: 0)))
    case .log: .log(LogDescription(mmapSize: 4096, mmapOffset: 0))
    case .iotlb: .iotlb(IOTLBMessage(iova: 0x1000, size: 0x1000, userAddr: 0x10_0000, permissions: 3, type: .update))
    case .config: .config(ConfigSpace(offset: 0, bytes: Array(repeating: 0, count: 8)))
    case .vringArea: .vringArea(VringArea(indexAndFlags: 0, size: 4096, offset: 0))
    case .inflight: .inflight(InflightDescription(mmapSize: 0, mmapOffset: 0, numQueues: 1, queueSize: 128))
    case .sharedObject: .sharedObject(SharedObject(uuid: Array(0..<16)))
    case .deviceStateTransfer: .deviceStateTransfer(DeviceStateTransfer(direction: .save))
    case .shmemMap: .shmemMap(ShmemMapRequest(shmid: 0, fdOffset: 0, shmOffset: 0, length: 4096, flags: 1))
    case .shmemConfig: .shmemConfig(ShmemConfig(nregions: 1, memorySizes: [4096]))
    }
  }

  static var decode: [[UInt8]] {
    FrontendRequest.allKnown.map { code in
      [UInt8(code.requestFDs.maximum)] + FrontendMessage(code, payload: sample(code.requestLayout)).encoded()
    }
      + BackendRequest.allKnown.map { code in
        [UInt8(code.requestFDs.maximum)] + BackendMessage(code, payload: sample(code.requestLayout)).encoded()
      }
  }

  /// One chunk of the back-end fuzzer's format: code, flags, fd spec, u16 length, body.
  static func chunk(
    _ code: FrontendRequest, _ payload: Payload = .empty, fds: Int = 0, kind: UInt8 = 0,
    needReply: Bool = false
  ) -> [UInt8] {
    let body = payload.encoded()
    let spec = UInt8(fds) | (kind << 2) | (kind << 4)
    return [UInt8(code.rawValue), needReply ? 0x8 : 0, spec, UInt8(body.count & 0xff), UInt8(body.count >> 8)] + body
  }

  static var backendSession: [[UInt8]] {
    let setup: [UInt8] =
      chunk(.getFeatures) + chunk(.setFeatures, .u64(1 << 32 | 1 << 30)) + chunk(.setOwner)
      + chunk(.getProtocolFeatures) + chunk(.setProtocolFeatures, .u64(0x8))
      + chunk(.setMemTable, sample(.memoryTable), fds: 1)
      + chunk(.setVringNum, .vringState(VringState(index: 0, num: 8)), needReply: true)
      + chunk(.setVringAddr, .vringAddress(VringAddress(index: 0, desc: 0x10_0000, used: 0x10_0200, avail: 0x10_0100)))
      + chunk(.setVringBase, .vringState(VringState(index: 0, num: 0)))
      + chunk(.setVringKick, .u64(0), fds: 1, kind: 1) + chunk(.setVringCall, .u64(0), fds: 1, kind: 1)
      + chunk(.setVringEnable, .vringState(VringState(index: 0, num: 1)))
    return [
      setup,
      setup + chunk(.getVringBase, .vringState(VringState(index: 0, num: 0))),
      chunk(.setOwner) + chunk(.setProtocolFeatures, .u64(0x9f62b)) + chunk(.addMemReg, sample(.singleRegion), fds: 1)
        + chunk(.remMemReg, sample(.singleRegion)) + chunk(.getConfig, sample(.config))
        + chunk(.getInflightFD, sample(.inflight)) + chunk(.setLogBase, sample(.log), fds: 1),
    ]
  }

  /// 64 KiB image: header bytes for the ring fuzzers, then a split ring at 0x100 (desc), 0x200 (avail),
  /// 0x300 (used) of size 8 with two chains; `blk` puts a virtio-blk read request in the first.
  static func splitRingImage(blk: Bool) -> [UInt8] {
    var m = [UInt8](repeating: 0, count: 4096)
    func put<T: FixedWidthInteger>(_ v: T, _ at: Int) {
      withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { m[at + i] = b } }
    }
    // Header read by the fuzzers: size exponent, desc, avail, used (offsets), flags, base.
    m[0] = 3
    put(UInt16(0x100), 1)
    put(UInt16(0x200), 3)
    put(UInt16(0x300), 5)
    m[7] = 0
    // Chain 0: desc 0 (readable 16 at 0x800) → desc 1 (writable 512 at 0xa00) → desc 2 (writable 1 at 0xe00).
    put(UInt64(0x800), 0x100)
    put(UInt32(16), 0x108)
    put(UInt16(1), 0x10c)
    put(UInt16(1), 0x10e)
    put(UInt64(0xa00), 0x110)
    put(UInt32(512), 0x118)
    put(UInt16(3), 0x11c)
    put(UInt16(2), 0x11e)
    put(UInt64(0xe00), 0x120)
    put(UInt32(1), 0x128)
    put(UInt16(2), 0x12c)
    // Chain 1: desc 3, indirect table at 0xf00 with one readable 64-byte buffer.
    put(UInt64(0xf00), 0x130)
    put(UInt32(16), 0x138)
    put(UInt16(4), 0x13c)
    put(UInt64(0x900), 0xf00)
    put(UInt32(64), 0xf08)
    // avail: idx 2, ring [0, 3].
    put(UInt16(2), 0x202)
    put(UInt16(0), 0x204)
    put(UInt16(3), 0x206)
    if blk { put(UInt32(0), 0x800) }  // VIRTIO_BLK_T_IN, sector 0
    return m
  }

  /// A split ring (size 8) whose chain 0 is a virtio-net header and a TCP/IPv4 TSO frame (3000
  /// bytes of payload, gso_size 1000) and chains 1-4 2 KiB receive buffers; byte 7 turns on
  /// HOST_TSO4/6 and HOST_ECN, and GUEST_TSO4/6 and GUEST_ECN when `guestTSO` (see FuzzDevices).
  static func netGSOImage(guestTSO: Bool) -> [UInt8] {
    var m = [UInt8](repeating: 0, count: 0x4800)
    func put<T: FixedWidthInteger>(_ v: T, _ at: Int) {
      withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { m[at + i] = b } }
    }
    func putBE(_ v: UInt16, _ at: Int) {
      m[at] = UInt8(v >> 8)
      m[at + 1] = UInt8(v & 0xff)
    }
    m[0] = 3
    put(UInt16(0x100), 1)
    put(UInt16(0x200), 3)
    put(UInt16(0x300), 5)
    m[7] = guestTSO ? 0x3f : 0x38
    let payload = 3000
    let frame = 0x1000
    // virtio_net_hdr: NEEDS_CSUM, TCPV4, hdr_len 54, gso_size 1000, csum_start 34, csum_offset 16.
    m[frame] = 1
    m[frame + 1] = 1
    put(UInt16(54), frame + 2)
    put(UInt16(1000), frame + 4)
    put(UInt16(34), frame + 6)
    put(UInt16(16), frame + 8)
    let eth = frame + 12
    for i in 0..<6 { m[eth + i] = 0xff }
    m[eth + 6] = 0x02
    m[eth + 11] = 1
    putBE(0x0800, eth + 12)
    let ip = eth + 14
    m[ip] = 0x45
    putBE(UInt16(40 + payload), ip + 2)
    putBE(0x4000, ip + 6)
    m[ip + 8] = 64
    m[ip + 9] = 6
    m[ip + 12] = 10
    m[ip + 15] = 1
    m[ip + 16] = 10
    m[ip + 19] = 2
    let tcp = ip + 20
    putBE(5000, tcp)
    putBE(40000, tcp + 2)
    putBE(0x1234, tcp + 4)
    m[tcp + 12] = 0x50
    m[tcp + 13] = 0x18
    putBE(0xffff, tcp + 14)
    for i in 0..<payload { m[tcp + 20 + i] = UInt8(truncatingIfNeeded: i) }
    put(UInt64(frame), 0x100)
    put(UInt32(12 + 54 + payload), 0x108)
    for i in 1...4 {
      put(UInt64(0x2000 + (i - 1) * 0x800), 0x100 + 16 * i)
      put(UInt32(0x800), 0x108 + 16 * i)
      put(UInt16(2), 0x10c + 16 * i)  // VRING_DESC_F_WRITE
    }
    put(UInt16(5), 0x202)
    for i in 0..<5 { put(UInt16(i), 0x204 + 2 * i) }
    return m
  }

  /// A packed ring at 0x100 (descriptors), 0x200 (driver area), 0x300 (device area), size 8, with
  /// one two-descriptor chain made available (wrap counter 1).
  static func packedRingImage() -> [UInt8] {
    var m = [UInt8](repeating: 0, count: 4096)
    func put<T: FixedWidthInteger>(_ v: T, _ at: Int) {
      withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { m[at + i] = b } }
    }
    m[0] = 3
    put(UInt16(0x100), 1)
    put(UInt16(0x200), 3)
    put(UInt16(0x300), 5)
    m[7] = 0
    put(UInt16(0x8000), 8)  // base: avail wrap 1
    put(UInt16(0x8000), 10)
    let avail: UInt16 = 1 << 7
    put(UInt64(0x800), 0x100)
    put(UInt32(64), 0x108)
    put(UInt16(0), 0x10c)
    put(avail | 1, 0x10e)
    put(UInt64(0xa00), 0x110)
    put(UInt32(64), 0x118)
    put(UInt16(0), 0x11c)
    put(avail | 2, 0x11e)
    return m
  }

  static var frontend: [[UInt8]] {
    let replies: [(FrontendRequest, Payload)] = [
      (.getFeatures, .u64(0x1_4000_0000)), (.getVringBase, .vringState(VringState(index: 0, num: 3))),
      (.getConfig, sample(.config)), (.getInflightFD, sample(.inflight)), (.setMemTable, .u64(0)),
    ]
    return replies.map { code, payload in
      [UInt8(code.rawValue), 0] + FrontendMessage(code, flags: [.reply, .version1], payload: payload).encoded()
    } + [[2, 0] + BackendMessage(.configChange, flags: [.version1, .needReply]).encoded()]
  }
}
