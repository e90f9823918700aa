/// Vring state: index and a number (SET_VRING_NUM/BASE/ENABLE, GET_VRING_BASE, ...). 8 bytes.
public struct VringState: Hashable, Sendable {
  public static let size = 8
  public var index: UInt32
  public var num: UInt32
  public init(index: UInt32, num: UInt32) {
    self.index = index
    self.num = num
  }
  func encode(into w: inout ByteWriter) {
    w.write(index)
    w.write(num)
  }
  init(from r: inout ByteReader) throws(ProtocolError) {
    index = try r.read()
    num = try r.read()
  }
}

/// Split/packed ring position as carried in SET_VRING_BASE / GET_VRING_BASE's `num`.
public struct VringBase: Hashable, Sendable {
  /// Next available (driver) index; 15 bits for packed rings, 16 for split.
  public var availIndex: UInt16
  public var availWrap: Bool
  /// Used (device) index, packed rings only.
  public var usedIndex: UInt16
  public var usedWrap: Bool

  public init(split availIndex: UInt16) {
    self.availIndex = availIndex
    availWrap = false
    usedIndex = 0
    usedWrap = false
  }

  public init(packedAvail: UInt16, availWrap: Bool, used: UInt16, usedWrap: Bool) {
    availIndex = packedAvail & 0x7fff
    self.availWrap = availWrap
    usedIndex = used & 0x7fff
    self.usedWrap = usedWrap
  }

  /// Decodes SET_VRING_BASE's `num`. For packed rings, a front-end that sends only the avail half
  /// (DPDK's virtio_user sends `1 << 15` for a fresh ring) means "used = avail", as DPDK's
  /// back-end reads it.
  public init(num: UInt32, packed: Bool) {
    if packed && num >> 16 == 0 {
      self.init(
        // bounded: masked to 15 bits
        packedAvail: UInt16(num & 0x7fff), availWrap: num & 0x8000 != 0, used: UInt16(num & 0x7fff),
        usedWrap: num & 0x8000 != 0)
    } else if packed {
      self.init(
        // bounded: masked to 15 bits
        packedAvail: UInt16(num & 0x7fff), availWrap: num & 0x8000 != 0, used: UInt16((num >> 16) & 0x7fff),
        usedWrap: num & 0x8000_0000 != 0)
    } else {
      self.init(split: UInt16(truncatingIfNeeded: num))
    }
  }

  public func num(packed: Bool) -> UInt32 {
    // bounded: UInt16 widens
    guard packed else { return UInt32(availIndex) }
    // bounded: UInt16 widens
    return UInt32(availIndex & 0x7fff) | (availWrap ? 0x8000 : 0) | UInt32(usedIndex & 0x7fff) << 16
      | (usedWrap ? 0x8000_0000 : 0)
  }
}

/// SET_VRING_ADDR body. 40 bytes.
public struct VringAddress: Hashable, Sendable {
  public static let size = 40
  /// `VHOST_VRING_F_LOG`: log used-ring writes.
  public static let flagLog: UInt32 = 1
  public var index: UInt32
  public var flags: UInt32
  public var descUserAddr: UInt64
  public var usedUserAddr: UInt64
  public var availUserAddr: UInt64
  public var logGuestAddr: UInt64
  public init(index: UInt32, flags: UInt32 = 0, desc: UInt64, used: UInt64, avail: UInt64, log: UInt64 = 0) {
    self.index = index
    self.flags = flags
    descUserAddr = desc
    usedUserAddr = used
    availUserAddr = avail
    logGuestAddr = log
  }
  func encode(into w: inout ByteWriter) {
    w.write(index)
    w.write(flags)
    w.write(descUserAddr)
    w.write(usedUserAddr)
    w.write(availUserAddr)
    w.write(logGuestAddr)
  }
  init(from r: inout ByteReader) throws(ProtocolError) {
    index = try r.read()
    flags = try r.read()
    descUserAddr = try r.read()
    usedUserAddr = try r.read()
    availUserAddr = try r.read()
    logGuestAddr = try r.read()
  }
}

/// One guest memory region. 32 bytes.
public struct MemoryRegion: Hashable, Sendable {
  public static let size = 32
  public var guestPhysAddr: UInt64
  public var memorySize: UInt64
  public var userAddr: UInt64
  public var mmapOffset: UInt64
  public init(guestPhysAddr: UInt64, memorySize: UInt64, userAddr: UInt64, mmapOffset: UInt64) {
    self.guestPhysAddr = guestPhysAddr
    self.memorySize = memorySize
    self.userAddr = userAddr
    self.mmapOffset = mmapOffset
  }
  func encode(into w: inout ByteWriter) {
    w.write(guestPhysAddr)
    w.write(memorySize)
    w.write(userAddr)
    w.write(mmapOffset)
  }
  init(from r: inout ByteReader) throws(ProtocolError) {
    guestPhysAddr = try r.read()
    memorySize = try r.read()
    userAddr = try r.read()
    mmapOffset = try r.read()
  }
}

/// SET_MEM_TABLE body: count, padding, then the regions. On the wire it is 8 + 32 × nregions bytes
/// (what QEMU and DPDK send); the C struct's full size, 264 bytes (8 regions), is also accepted.
public struct MemoryTable: Hashable, Sendable {
  /// The largest size: 8 regions (`VHOST_MEMORY_BASELINE_NREGIONS`).
  public static let size = 8 + Limits.baselineRegions * MemoryRegion.size
  public var regions: [MemoryRegion]
  public init(regions: [MemoryRegion]) { self.regions = regions }

  /// The encoded size for `count` regions.
  public static func size(regions count: Int) -> Int { 8 + count * MemoryRegion.size }

  func encode(into w: inout ByteWriter) {
    // bounded: a table holds at most Limits.maxMemSlots regions
    w.write(UInt32(regions.count))
    w.write(UInt32(0))
    for region in regions { region.encode(into: &w) }
  }
  init(from r: inout ByteReader) throws(ProtocolError) {
    let total = r.remaining
    let count: UInt32 = try r.read()
    try r.skip(4)
    // bounded: a constant
    guard count <= UInt32(Limits.baselineRegions) else {
      throw .invalidField(request: "SET_MEM_TABLE", field: "nregions", value: UInt64(count))
    }
    guard total == Self.size(regions: Int(count)) || total == Self.size else {
      throw .wrongPayloadSize(
        request: "SET_MEM_TABLE", expected: "\(Self.size(regions: Int(count))) (or 264)", actual: total)
    }
    var regions: [MemoryRegion] = []
    for _ in 0..<count { regions.append(try MemoryRegion(from: &r)) }
    try r.skip(r.remaining)
    self.regions = regions
  }
}

/// ADD_MEM_REG / REM_MEM_REG body: u64 padding and one region. 40 bytes.
public struct SingleMemoryRegion: Hashable, Sendable {
  public static let size = 8 + MemoryRegion.size
  public var region: MemoryRegion
  public init(_ region: MemoryRegion) { self.region = region }
  func encode(into w: inout ByteWriter) {
    w.write(UInt64(0))
    region.encode(into: &w)
  }
  init(from r: inout ByteReader) throws(ProtocolError) {
    try r.skip(8)
    region = try MemoryRegion(from: &r)
  }
}

/// SET_LOG_BASE body (with LOG_SHMFD): size and offset of the log in the passed fd. 16 bytes.
public struct LogDescription: Hashable, Sendable {
  public static let size = 16
  public var mmapSize: UInt64
  public var mmapOffset: UInt64
  public init(mmapSize: UInt64, mmapOffset: UInt64) {
    self.mmapSize = mmapSize
    self.mmapOffset = mmapOffset
  }
  func encode(into w: inout ByteWriter) {
    w.write(mmapSize)
    w.write(mmapOffset)
  }
  init(from r: inout ByteReader) throws(ProtocolError) {
    mmapSize = try r.read()
    mmapOffset = try r.read()
  }
}

/// `struct vhost_iotlb_msg`: 26 bytes of fields, 32 on the wire (C alignment).
public struct IOTLBMessage: Hashable, Sendable {
  public static let size = 32
  public enum Kind: UInt8, Sendable { case miss = 1, update = 2, invalidate = 3, accessFail = 4 }
  public var iova: UInt64
  public var size: UInt64
  public var userAddr: UInt64
  /// 0 none, 1 read, 2 write, 3 read-write.
  public var permissions: UInt8
  public var type: UInt8
  public init(iova: UInt64, size: UInt64, userAddr: UInt64, permissions: UInt8, type: Kind) {
    self.iova = iova
    self.size = size
    self.userAddr = userAddr
    self.permissions = permissions
    self.type = type.rawValue
  }
  func encode(into w: inout ByteWriter) {
    w.write(iova)
    w.write(size)
    w.write(userAddr)
    w.write(permissions)
    w.write(type)
    w.pad(6)
  }
  init(from r: inout ByteReader) throws(ProtocolError) {
    iova = try r.read()
    size = try r.read()
    userAddr = try r.read()
    permissions = try r.read()
    type = try r.read()
    try r.skip(6)
  }
}

/// GET_CONFIG / SET_CONFIG body: offset, size, flags and up to 256 bytes of config space.
public struct ConfigSpace: Hashable, Sendable {
  public static let headerSize = 12
  /// Writable fields (0) or live migration (1).
  public static let flagLiveMigration: UInt32 = 1
  public var offset: UInt32
  public var flags: UInt32
  public var bytes: [UInt8]
  public init(offset: UInt32, flags: UInt32 = 0, bytes: [UInt8]) {
    self.offset = offset
    self.flags = flags
    self.bytes = bytes
  }
  func encode(into w: inout ByteWriter) {
    w.write(offset)
    // bounded: config spaces are at most Limits.maxConfigSize bytes
    w.write(UInt32(bytes.count))
    w.write(flags)
    w.write(bytes: bytes)
  }
  init(from r: inout ByteReader) throws(ProtocolError) {
    offset = try r.read()
    let size: UInt32 = try r.read()
    flags = try r.read()
    // bounded: a constant
    guard size <= UInt32(Limits.maxConfigSize), Int(size) == r.remaining else {
      throw .wrongPayloadSize(
        request: "GET_CONFIG/SET_CONFIG", expected: "12 + size field (\(size), at most 256)", actual: r.remaining + 12)
    }
    bytes = try r.read(count: Int(size))
  }
}

/// BACKEND_VRING_HOST_NOTIFIER_MSG body. 24 bytes.
public struct VringArea: Hashable, Sendable {
  public static let size = 24
  /// Bit 8 of `indexAndFlags`: no fd, deregister.
  public static let noFDFlag: UInt64 = 0x100
  public var indexAndFlags: UInt64
  public var size: UInt64
  public var offset: UInt64
  public init(indexAndFlags: UInt64, size: UInt64, offset: UInt64) {
    self.indexAndFlags = indexAndFlags
    self.size = size
    self.offset = offset
  }
  func encode(into w: inout ByteWriter) {
    w.write(indexAndFlags)
    w.write(size)
    w.write(offset)
  }
  init(from r: inout ByteReader) throws(ProtocolError) {
    indexAndFlags = try r.read()
    size = try r.read()
    offset = try r.read()
  }
}

/// GET_INFLIGHT_FD / SET_INFLIGHT_FD body: 20 bytes of fields, 24 on the wire (tail padding).
public struct InflightDescription: Hashable, Sendable {
  public static let size = 24
  public var mmapSize: UInt64
  public var mmapOffset: UInt64
  public var numQueues: UInt16
  public var queueSize: UInt16
  public init(mmapSize: UInt64, mmapOffset: UInt64, numQueues: UInt16, queueSize: UInt16) {
    self.mmapSize = mmapSize
    self.mmapOffset = mmapOffset
    self.numQueues = numQueues
    self.queueSize = queueSize
  }
  func encode(into w: inout ByteWriter) {
    w.write(mmapSize)
    w.write(mmapOffset)
    w.write(numQueues)
    w.write(queueSize)
    w.pad(4)
  }
  init(from r: inout ByteReader) throws(ProtocolError) {
    mmapSize = try r.read()
    mmapOffset = try r.read()
    numQueues = try r.read()
    queueSize = try r.read()
    try r.skip(4)
  }
}

/// `VhostUserShared`: a 16-byte UUID.
public struct SharedObject: Hashable, Sendable {
  public static let size = 16
  public var uuid: [UInt8]
  public init(uuid: [UInt8]) {
    self.uuid = Array(uuid.prefix(16)) + Array(repeating: 0, count: max(0, 16 - uuid.count))
  }
  func encode(into w: inout ByteWriter) { w.write(bytes: uuid) }
  init(from r: inout ByteReader) throws(ProtocolError) { uuid = try r.read(count: 16) }
}

/// SET_DEVICE_STATE_FD body: direction and phase. 8 bytes.
public struct DeviceStateTransfer: Hashable, Sendable {
  public static let size = 8
  public enum Direction: UInt32, Sendable { case save = 0, load = 1 }
  public var direction: UInt32
  public var phase: UInt32
  public init(direction: Direction, phase: UInt32 = 0) {
    self.direction = direction.rawValue
    self.phase = phase
  }
  func encode(into w: inout ByteWriter) {
    w.write(direction)
    w.write(phase)
  }
  init(from r: inout ByteReader) throws(ProtocolError) {
    direction = try r.read()
    phase = try r.read()
  }
}

/// BACKEND_SHMEM_MAP / UNMAP body. 40 bytes.
public struct ShmemMapRequest: Hashable, Sendable {
  public static let size = 40
  public var shmid: UInt8
  public var fdOffset: UInt64
  public var shmOffset: UInt64
  public var length: UInt64
  public var flags: UInt64
  public init(shmid: UInt8, fdOffset: UInt64, shmOffset: UInt64, length: UInt64, flags: UInt64) {
    self.shmid = shmid
    self.fdOffset = fdOffset
    self.shmOffset = shmOffset
    self.length = length
    self.flags = flags
  }
  func encode(into w: inout ByteWriter) {
    w.write(shmid)
    w.pad(7)
    w.write(fdOffset)
    w.write(shmOffset)
    w.write(length)
    w.write(flags)
  }
  init(from r: inout ByteReader) throws(ProtocolError) {
    shmid = try r.read()
    try r.skip(7)
    fdOffset = try r.read()
    shmOffset = try r.read()
    length = try r.read()
    flags = try r.read()
  }
}

/// GET_SHMEM_CONFIG reply: region count and 256 sizes. 2056 bytes.
public struct ShmemConfig: Hashable, Sendable {
  public static let size = 8 + 256 * 8
  public var nregions: UInt32
  public var memorySizes: [UInt64]
  public init(nregions: UInt32, memorySizes: [UInt64]) {
    self.nregions = nregions
    self.memorySizes = Array(memorySizes.prefix(256)) + Array(repeating: 0, count: max(0, 256 - memorySizes.count))
  }
  func encode(into w: inout ByteWriter) {
    w.write(nregions)
    w.write(UInt32(0))
    for s in memorySizes { w.write(s) }
  }
  init(from r: inout ByteReader) throws(ProtocolError) {
    nregions = try r.read()
    try r.skip(4)
    var sizes: [UInt64] = []
    sizes.reserveCapacity(256)
    for _ in 0..<256 { sizes.append(try r.read()) }
    memorySizes = sizes
  }
}
