import VhostProtocol
import VhostSystem
import Virtqueue

/// A virtio-blk driver on our front-end: issues real block requests to any vhost-user-blk back-end.
public final class BlkDriver: @unchecked Sendable {
  public enum RequestType: UInt32, Sendable {
    case read = 0, write = 1, flush = 4, getID = 8, discard = 11, writeZeroes = 13
  }
  public struct IOError: Error, CustomStringConvertible {
    public let type: RequestType
    public let status: UInt8
    public var description: String { "virtio-blk \(type) failed with status \(status)" }
  }

  public let device: DeviceDriver
  public let queue: QueueDriver
  let slots: [UInt64]  // per-request scratch: 16-byte header + status byte
  let dataOffset: UInt64
  public let maxTransfer: Int
  public let timeoutMilliseconds: Int

  /// Features a block driver asks for (the ring layout features are the caller's choice).
  public static let defaultFeatures: VirtioFeatures = [
    .version1, VirtioFeatures(bit: 9) /* FLUSH */, VirtioFeatures(bit: 6) /* BLK_SIZE */,
    VirtioFeatures(bit: 2) /* SEG_MAX */,
  ]

  public init(device: DeviceDriver, queue: Int = 0, maxTransfer: Int = 1 << 20, timeoutMilliseconds: Int = 10_000)
    throws(FrontendError)
  {
    self.device = device
    self.queue = device.queues[queue]
    self.maxTransfer = maxTransfer
    self.timeoutMilliseconds = timeoutMilliseconds
    var s: [UInt64] = []
    for _ in 0..<Int(self.queue.ring.size) { s.append(try device.allocate(32, alignment: 32)) }
    slots = s
    dataOffset = try device.allocate(maxTransfer, alignment: 4096)
  }

  var mem: SharedMemory { device.memory.memory }

  /// The outcome of one raw request.
  public struct Completion: Sendable {
    /// The status byte the device wrote (0xff if it wrote none).
    public var status: UInt8
    /// The device-writable data (for reads).
    public var data: [UInt8]
    /// The used length the device reported.
    public var usedLength: UInt32
  }

  /// Submits one request exactly as given (type, sector, readable data, writable length, and
  /// whether a status byte is provided) and waits for it. Tests use it to send malformed requests.
  public func request(
    type: UInt32, sector: UInt64, write data: [UInt8] = [], readLength: Int = 0,
    statusByte: Bool = true
  ) throws(FrontendError) -> Completion {
    guard data.count <= maxTransfer, readLength <= maxTransfer else {
      throw .invalidArgument("transfer larger than \(maxTransfer) bytes")
    }
    let slot = slots[0]
    do {
      try mem.store(type, at: slot)
      try mem.store(UInt32(0), at: slot + 4)
      try mem.store(sector, at: slot + 8)
      try mem.store(UInt8(0xff), at: slot + 16)
      if !data.isEmpty { try mem.write(data, at: dataOffset) }
    } catch {
      throw .invalidArgument(error.description)
    }
    let g = device.memory
    var chain = [DriverBuffer(guestAddress: g.gpa(slot), length: 16, deviceWritable: false)]
    if !data.isEmpty {
      // bounded: our own request sizes (checked against the device's limits)
      chain.append(DriverBuffer(guestAddress: g.gpa(dataOffset), length: UInt32(data.count), deviceWritable: false))
    }
    if readLength > 0 {
      // bounded: our own request sizes (checked against the device's limits)
      chain.append(DriverBuffer(guestAddress: g.gpa(dataOffset), length: UInt32(readLength), deviceWritable: true))
    }
    if statusByte {
      chain.append(DriverBuffer(guestAddress: g.gpa(slot + 16), length: 1, deviceWritable: true))
    }
    let used: [UsedElement]
    do {
      try queue.ring.add(chain)
      try queue.notifyIfNeeded()
    } catch let error as QueueError {
      throw .invalidArgument(error.description)
    } catch let error as SystemError {
      throw .system(error)
    } catch {
      throw .invalidArgument("\(error)")
    }
    used = try queue.waitUsed(timeoutMilliseconds: timeoutMilliseconds)
    let status = (try? mem.load(UInt8.self, at: slot + 16)) ?? 0xff
    var out: [UInt8] = []
    if readLength > 0 {
      do {
        out = try mem.read(at: dataOffset, count: readLength)
      } catch {
        throw .invalidArgument(error.description)
      }
    }
    return Completion(status: status, data: out, usedLength: used.first?.length ?? 0)
  }

  /// Submits one request and waits for it; a non-zero status is an error. Returns read data.
  func submit(_ type: RequestType, sector: UInt64, write data: [UInt8] = [], readLength: Int = 0)
    throws(FrontendError) -> [UInt8]
  {
    let c = try request(type: type.rawValue, sector: sector, write: data, readLength: readLength)
    guard c.status == 0 else { throw .refused(request: "virtio-blk \(type)", status: UInt64(c.status)) }
    return c.data
  }

  /// DISCARD of `length` bytes at `offset` (both sector aligned).
  public func discard(offset: UInt64, length: UInt64) throws(FrontendError) {
    _ = try submit(.discard, sector: 0, write: Self.segment(offset: offset, length: length, flags: 0))
  }

  /// WRITE_ZEROES of `length` bytes at `offset`; `unmap` lets the device deallocate.
  public func writeZeroes(offset: UInt64, length: UInt64, unmap: Bool = false) throws(FrontendError) {
    _ = try submit(.writeZeroes, sector: 0, write: Self.segment(offset: offset, length: length, flags: unmap ? 1 : 0))
  }

  /// A discard/write-zeroes segment {sector u64, num_sectors u32, flags u32}.
  public static func segment(offset: UInt64, length: UInt64, flags: UInt32) -> [UInt8] {
    var w = ByteWriter()
    w.write(offset / 512)
    w.write(UInt32(truncatingIfNeeded: length / 512))
    w.write(flags)
    return w.bytes
  }

  /// Reads `length` bytes (a multiple of 512) at byte `offset` (sector aligned).
  public func read(offset: UInt64, length: Int) throws(FrontendError) -> [UInt8] {
    try submit(.read, sector: offset / 512, readLength: length)
  }

  /// Writes `data` (a multiple of 512) at byte `offset` (sector aligned).
  public func write(offset: UInt64, data: [UInt8]) throws(FrontendError) {
    _ = try submit(.write, sector: offset / 512, write: data)
  }

  /// FLUSH.
  public func flush() throws(FrontendError) { _ = try submit(.flush, sector: 0) }

  /// GET_ID: the device's serial (up to 20 bytes).
  public func getID() throws(FrontendError) -> String {
    let bytes = try submit(.getID, sector: 0, readLength: 20)
    return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
  }
}
