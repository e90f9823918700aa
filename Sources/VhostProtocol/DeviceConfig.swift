/// virtio-blk configuration space (the fields a back-end reports via GET_CONFIG).
public struct BlkConfig: Hashable, Sendable {
  /// Size in 512-byte sectors.
  public var capacity: UInt64
  public var sizeMax: UInt32
  public var segMax: UInt32
  public var blkSize: UInt32
  public var numQueues: UInt16
  public var maxDiscardSectors: UInt32
  public var maxWriteZeroesSectors: UInt32
  /// Bytes of config space that hold the fields above.
  public static let size = 60

  public init(
    capacity: UInt64, sizeMax: UInt32 = 0, segMax: UInt32 = 0, blkSize: UInt32 = 512,
    numQueues: UInt16 = 1, maxDiscardSectors: UInt32 = 0, maxWriteZeroesSectors: UInt32 = 0
  ) {
    self.capacity = capacity
    self.sizeMax = sizeMax
    self.segMax = segMax
    self.blkSize = blkSize
    self.numQueues = numQueues
    self.maxDiscardSectors = maxDiscardSectors
    self.maxWriteZeroesSectors = maxWriteZeroesSectors
  }

  /// Decodes the standard layout (capacity @0, size_max @8, seg_max @12, blk_size @20,
  /// num_queues @34, max_discard_sectors @36, max_write_zeroes_sectors @48).
  public init(bytes: [UInt8]) throws(ProtocolError) {
    guard bytes.count >= 24 else { throw .truncated(needed: 24, available: bytes.count) }
    func field<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T {
      guard at + MemoryLayout<T>.size <= bytes.count else { return 0 }
      var r = ByteReader(bytes, offset: at)
      return (try? r.read(T.self)) ?? 0
    }
    capacity = field(0, UInt64.self)
    sizeMax = field(8, UInt32.self)
    segMax = field(12, UInt32.self)
    blkSize = field(20, UInt32.self)
    numQueues = field(34, UInt16.self)
    maxDiscardSectors = field(36, UInt32.self)
    maxWriteZeroesSectors = field(48, UInt32.self)
  }
}

/// virtio-net configuration space.
public struct NetConfig: Hashable, Sendable {
  public var mac: [UInt8]
  public var status: UInt16
  public var maxVirtqueuePairs: UInt16
  public var mtu: UInt16
  public static let size = 12

  public init(bytes: [UInt8]) throws(ProtocolError) {
    guard bytes.count >= 6 else { throw .truncated(needed: 6, available: bytes.count) }
    mac = Array(bytes[0..<6])
    var r = ByteReader(bytes, offset: 6)
    status = (try? r.read(UInt16.self)) ?? 0
    maxVirtqueuePairs = (try? r.read(UInt16.self)) ?? 0
    mtu = (try? r.read(UInt16.self)) ?? 0
  }

  public var macString: String {
    mac.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }
      .joined(separator: ":")
  }
}
