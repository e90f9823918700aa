import Synchronization
import VhostBackend
import VhostProtocol
import VhostSystem
import Virtqueue

/// virtio-blk over a disk image or block device.
public final class BlkDevice: VhostUserDevice, @unchecked Sendable {
  public let type = "block"
  public let file: BlockFile
  public let numQueues: Int
  public let queueSize: Int
  public let serial: String
  public static let sectorSize: UInt64 = 512
  static let segMax: UInt32 = 126
  static let maxDiscardSectors: UInt32 = 1 << 22
  private let lock = Lock()
  private var _stats = Stats()
  /// The cache mode (CONFIG_WCE): true is writeback (FLUSH makes writes durable), false is
  /// writethrough (every write is made durable before it completes).
  private let writeback = Atomic<Bool>(true)
  /// Offset of `writeback` in struct virtio_blk_config.
  static let wceOffset = 32
  private let ackedBits = Atomic<UInt64>(0)

  /// Status bytes.
  public enum Status: UInt8 { case ok = 0, ioerr = 1, unsupp = 2 }
  /// Request types.
  enum RequestType: UInt32 {
    case read = 0, write = 1, flush = 4, getID = 8, discard = 11, writeZeroes = 13
  }

  public struct Stats: Sendable {
    public var reads = 0
    public var writes = 0
    public var flushes = 0
    /// Writes made durable on their own because the cache mode is writethrough (CONFIG_WCE).
    public var writethroughSyncs = 0
    public var errors = 0
    public var unsupported = 0
  }

  /// Threads doing the file I/O (0: synchronously on the queue's worker thread).
  public let ioThreads: Int
  let pool: WorkerPool?

  public init(
    path: String, readOnly: Bool = false, numQueues: Int = 1, queueSize: Int = 1024, serial: String = "",
    direct: Bool = false, ioThreads: Int = 0
  ) throws {
    file = try BlockFile(path: path, readOnly: readOnly, direct: direct)
    self.ioThreads = ioThreads
    pool = ioThreads > 0 ? WorkerPool(threads: ioThreads, name: "vhost-user-blk-io") : nil
    self.numQueues = numQueues
    self.queueSize = queueSize
    self.serial = serial.isEmpty ? "swift-vhost-user" : serial
  }

  public var stats: Stats { lock.withLock { _stats } }

  public var features: VirtioFeatures {
    var f: VirtioFeatures = [
      .version1, VirtioFeatures(bit: 2) /* SEG_MAX */, VirtioFeatures(bit: 6) /* BLK_SIZE */,
      VirtioFeatures(bit: 9) /* FLUSH */, VirtioFeatures(bit: 10) /* TOPOLOGY */,
    ]
    if numQueues > 1 { f.insert(VirtioFeatures(bit: 12)) }  // MQ
    if file.readOnly {
      f.insert(VirtioFeatures(bit: 5))  // RO
    } else {
      f.insert(VirtioFeatures(bit: 11))  // CONFIG_WCE
      f.insert(VirtioFeatures(bit: 13))  // DISCARD
      f.insert(VirtioFeatures(bit: 14))  // WRITE_ZEROES
    }
    return f
  }
  public var queueCount: Int { numQueues }
  public var maxQueueSize: Int { queueSize }
  public var capabilityFeatures: [String] { ["read-only", "blk-file"] }

  public func readConfig() -> [UInt8] {
    var w = ByteWriter()
    w.write(file.size / Self.sectorSize)  // capacity
    w.write(UInt32(0))  // size_max
    w.write(Self.segMax)  // seg_max
    w.write(UInt16(0))  // geometry.cylinders
    w.write(UInt8(0))  // geometry.heads
    w.write(UInt8(0))  // geometry.sectors
    w.write(UInt32(truncatingIfNeeded: Self.sectorSize))  // blk_size
    w.write(UInt8(0))  // physical_block_exp
    w.write(UInt8(0))  // alignment_offset
    w.write(UInt16(1))  // min_io_size
    w.write(UInt32(0))  // opt_io_size
    w.write(UInt8(writeback.load(ordering: .relaxed) ? 1 : 0))  // writeback
    w.write(UInt8(0))  // unused
    w.write(UInt16(truncatingIfNeeded: numQueues))  // num_queues (1...64, checked by the CLI)
    w.write(Self.maxDiscardSectors)  // max_discard_sectors
    w.write(UInt32(1))  // max_discard_seg
    w.write(UInt32(1))  // discard_sector_alignment
    w.write(Self.maxDiscardSectors)  // max_write_zeroes_sectors
    w.write(UInt32(1))  // max_write_zeroes_seg
    w.write(UInt8(1))  // write_zeroes_may_unmap
    w.pad(3)
    return w.bytes
  }

  /// Whether writes are cached until FLUSH (writeback, the default) or made durable one by one.
  public var isWriteback: Bool { writeback.load(ordering: .relaxed) }

  /// SET_CONFIG: only the one-byte `writeback` field (CONFIG_WCE) is writable, and only when the
  /// disk is; every other field is refused. The mode belongs to the export: it outlives a
  /// front-end's reconnection (a guest's driver reads it again when it probes the disk).
  public func writeConfig(offset: Int, bytes: [UInt8], migration: Bool) throws {
    guard !file.readOnly, offset == Self.wceOffset, bytes.count == 1 else {
      throw DeviceError("only the writeback field (offset \(Self.wceOffset), 1 byte) is writable")
    }
    guard VirtioFeatures(rawValue: ackedBits.load(ordering: .relaxed)).contains(Self.configWCE) else {
      throw DeviceError("writeback is writable only with VIRTIO_BLK_F_CONFIG_WCE negotiated")
    }
    writeback.store(bytes[0] != 0, ordering: .relaxed)
  }

  static let flushFeature = VirtioFeatures(bit: 9)
  static let configWCE = VirtioFeatures(bit: 11)

  /// The cache mode follows the driver's features, as QEMU's virtio-blk does: a driver that can
  /// switch it (CONFIG_WCE) finds the mode the export is in; otherwise writeback exactly when the
  /// driver can flush (virtio 1.2 §5.2.6.1: without FLUSH, writes are made durable one by one).
  public func featuresAcknowledged(_ features: VirtioFeatures) {
    ackedBits.store(features.rawValue, ordering: .relaxed)
    if !features.contains(Self.flushFeature) {
      writeback.store(false, ordering: .relaxed)
    } else if !features.contains(Self.configWCE) {
      writeback.store(true, ordering: .relaxed)
    }
  }

  public func process(_ queue: QueueHandle) {
    let log = queue.log
    if let pool {
      // Many requests in flight per queue: each runs on the pool and completes out of order.
      while let chain = queue.next() {
        let completion = queue.asyncCompletion(for: chain)
        pool.submit { [self] in
          completion.complete(written: execute(chain, log: log))
        }
      }
      return
    }
    var n = 0
    while let chain = queue.next() {
      queue.complete(chain, written: execute(chain, log: log))
      n += 1
      if n % 16 == 0 { queue.notifyIfNeeded() }
    }
    queue.notifyIfNeeded()
  }

  /// Runs one request and writes its status byte (the last writable byte); returns the used length.
  func execute(_ chain: DescriptorChain, log: DirtyLog?) -> Int {
    let (status, written) = handle(chain, log: log)
    count(status)
    guard chain.writableLength >= 1 else { return 0 }
    var w = chain.writer(log: log)
    w.skip(chain.writableLength - 1)
    w.write([status.rawValue])
    return written + 1
  }

  func count(_ status: Status) {
    lock.withLock {
      switch status {
      case .ok: break
      case .ioerr: _stats.errors += 1
      case .unsupp: _stats.unsupported += 1
      }
    }
  }

  /// Executes one request; returns the status and the data bytes written (before the status byte).
  func handle(_ chain: DescriptorChain, log: DirtyLog?) -> (Status, Int) {
    var reader = chain.reader()
    guard chain.writableLength >= 1, let header = reader.readExactly(16) else { return (.ioerr, 0) }
    var r = ByteReader(header)
    let rawType = (try? r.read(UInt32.self)) ?? UInt32.max
    _ = try? r.read(UInt32.self)
    let sector = (try? r.read(UInt64.self)) ?? 0
    guard let type = RequestType(rawValue: rawType) else { return (.unsupp, 0) }
    let dataIn = chain.writableLength - 1
    switch type {
    case .read:
      guard let offset = byteRange(sector: sector, length: UInt64(dataIn)) else { return (.ioerr, 0) }
      var writer = chain.writer(log: log)
      var fileOffset = offset
      do {
        try writer.withSegments(dataIn) { mapping, at, len in
          try file.read(into: mapping, at: at, count: len, fileOffset: fileOffset)
          fileOffset += UInt64(len)
        }
      } catch {
        return (.ioerr, 0)
      }
      lock.withLock { _stats.reads += 1 }
      return (.ok, dataIn)
    case .write:
      guard !file.readOnly else { return (.ioerr, 0) }
      let length = reader.remaining
      guard let offset = byteRange(sector: sector, length: UInt64(length)) else { return (.ioerr, 0) }
      var fileOffset = offset
      do {
        try reader.withSegments(length) { mapping, at, len in
          try file.write(from: mapping, at: at, count: len, fileOffset: fileOffset)
          fileOffset += UInt64(len)
        }
        try syncIfWritethrough()
      } catch {
        return (.ioerr, 0)
      }
      lock.withLock { _stats.writes += 1 }
      return (.ok, 0)
    case .flush:
      if !file.readOnly {
        do { try file.flush() } catch { return (.ioerr, 0) }
      }
      lock.withLock { _stats.flushes += 1 }
      return (.ok, 0)
    case .getID:
      var writer = chain.writer(log: log)
      let id = Array(serial.utf8.prefix(20))
      let n = min(dataIn, 20)
      writer.write((id + [UInt8](repeating: 0, count: 20)).prefix(n))
      return (.ok, n)
    case .discard, .writeZeroes:
      guard !file.readOnly else { return (.ioerr, 0) }
      // One segment {sector u64, num_sectors u32, flags u32} (max_*_seg = 1).
      guard reader.remaining == 16, let seg = reader.readExactly(16) else { return (.unsupp, 0) }
      var s = ByteReader(seg)
      let start = (try? s.read(UInt64.self)) ?? 0
      let count = (try? s.read(UInt32.self)) ?? 0
      let flags = (try? s.read(UInt32.self)) ?? 0
      guard count <= Self.maxDiscardSectors, flags & ~1 == 0 || type == .writeZeroes,
        let offset = byteRange(sector: start, length: UInt64(count) * Self.sectorSize)
      else { return (.ioerr, 0) }
      if type == .discard && flags != 0 { return (.unsupp, 0) }
      do {
        // DISCARD punches; WRITE_ZEROES zeroes, or punches with the UNMAP flag (reads return zeros).
        try file.zero(
          fileOffset: offset, count: UInt64(count) * Self.sectorSize, punch: type == .discard || flags & 1 != 0)
        try syncIfWritethrough()
      } catch {
        return (.ioerr, 0)
      }
      return (.ok, 0)
    }
  }

  /// In writethrough mode a write completes only once it is durable.
  func syncIfWritethrough() throws(SystemError) {
    guard !isWriteback else { return }
    try file.flush()
    lock.withLock { _stats.writethroughSyncs += 1 }
  }

  /// The byte offset of a request, nil unless `[sector*512, +length)` lies inside the disk.
  func byteRange(sector: UInt64, length: UInt64) -> UInt64? {
    guard sector <= file.size / Self.sectorSize else { return nil }
    let offset = sector * Self.sectorSize
    guard length <= file.size - offset else { return nil }
    return offset
  }
}
