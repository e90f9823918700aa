import Foundation
import Testing
import VhostBackend
import VhostDevices
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTooling
import Virtqueue

/// Our blk back-end driven by our front-end: every request type, and malformed requests.
@Suite(.serialized)
struct BlkDeviceTests {
  static let size = 8 << 20

  /// A back-end on a fresh image and a connected BlkDriver.
  static func withDisk(
    readOnly: Bool = false, ioThreads: Int = 0, features: VirtioFeatures = [],
    _ body: (BlkDriver, String, BlkDevice) throws -> Void
  ) throws {
    let dir = try TemporaryDirectory()
    let image = dir.file("disk.img")
    try makeImage(image, size: size)
    let device = try BlkDevice(path: image, readOnly: readOnly, serial: "test-serial-0123456789", ioThreads: ioThreads)
    let socket = dir.file("blk.sock")
    let server = BackendServer(listener: try UnixListener(path: socket), device: device)
    server.startInBackground()
    defer { server.stopAndWait() }
    let connection = try VhostUserConnection.connect(path: socket, retryMilliseconds: 2000)
    defer { connection.close() }
    let driver = try DeviceDriver(
      frontend: connection.device(), features: BlkDriver.defaultFeatures.union(features), queueCount: 1,
      queueSize: 128, memorySize: 8 << 20)
    try body(try BlkDriver(device: driver), image, device)
  }

  @Test("read, write, flush, GET_ID, DISCARD, WRITE_ZEROES (with and without UNMAP)", arguments: [0, 4])
  func requests(ioThreads: Int) throws {
    try Self.withDisk(ioThreads: ioThreads, features: [VirtioFeatures(bit: 13), VirtioFeatures(bit: 14), .eventIdx]) {
      blk, image, _ in
      let data = pattern(64 << 10, seed: 9)
      try blk.write(offset: 1 << 20, data: data)
      try blk.flush()
      #expect(try blk.read(offset: 1 << 20, length: data.count) == data)
      #expect(try readFile(image, offset: 1 << 20, count: data.count) == data)
      #expect(try blk.getID() == "test-serial-01234567")  // 20 bytes, not NUL-terminated
      try blk.writeZeroes(offset: 1 << 20, length: 4096)
      #expect(try readFile(image, offset: 1 << 20, count: 4096) == [UInt8](repeating: 0, count: 4096))
      try blk.writeZeroes(offset: (1 << 20) + 4096, length: 4096, unmap: true)
      #expect(try blk.read(offset: (1 << 20) + 4096, length: 4096) == [UInt8](repeating: 0, count: 4096))
      try blk.discard(offset: 2 << 20, length: 1 << 20)
      // The image is never truncated or extended.
      #expect(try FileManager.default.attributesOfItem(atPath: image)[.size] as? Int == Self.size)
      // Many requests in a row (the ring wraps).
      for i in 0..<300 {
        let d = pattern(4096, seed: UInt8(i & 0xff))
        try blk.write(offset: UInt64(i) * 4096, data: d)
        #expect(try blk.read(offset: UInt64(i) * 4096, length: 4096) == d)
      }
    }
  }

  @Test("malformed requests get IOERR/UNSUPP, never a partial write past the end")
  func malformed() throws {
    try Self.withDisk { blk, image, device in
      let sectors = UInt64(Self.size / 512)
      let before = try readFile(image, offset: UInt64(Self.size - 4096), count: 4096)
      // Crossing the end of the disk: IOERR and nothing written.
      let cross = try blk.request(type: 1, sector: sectors - 4, write: pattern(8192, seed: 3))
      #expect(cross.status == 1)
      #expect(try readFile(image, offset: UInt64(Self.size - 4096), count: 4096) == before)
      #expect(try blk.request(type: 0, sector: sectors, readLength: 512).status == 1)
      #expect(try blk.request(type: 0, sector: UInt64.max / 256, readLength: 512).status == 1)
      // Unknown request type: UNSUPP.
      #expect(try blk.request(type: 0x4242, sector: 0).status == 2)
      // No status byte: completed with length 0, nothing crashes.
      let noStatus = try blk.request(type: 0, sector: 0, statusByte: false)
      #expect(noStatus.usedLength == 0)
      // DISCARD with a segment beyond the end or a bad length.
      #expect(
        try blk.request(
          type: 11, sector: 0, write: BlkDriver.segment(offset: UInt64(Self.size), length: 4096, flags: 0)
        ).status == 1)
      #expect(try blk.request(type: 11, sector: 0, write: [1, 2, 3]).status == 2)
      // The device still serves good requests afterwards.
      let d = pattern(4096, seed: 77)
      try blk.write(offset: 0, data: d)
      #expect(try blk.read(offset: 0, length: 4096) == d)
      #expect(device.stats.errors >= 4)
      #expect(device.stats.unsupported >= 2)
    }
  }

  @Test(
    "hostile chains: buffer outside guest memory, zero-length or read-only status, 2^32 sectors: error or dropped, image unchanged"
  )
  func hostileChains() throws {
    try Self.withDisk { blk, image, device in
      let g = blk.device.memory
      let before = try readFile(image, offset: 0, count: Self.size)
      let header = try g.allocate(16)
      let data = try g.allocate(4096)
      let status = try g.allocate(64)
      try g.memory.write(pattern(4096, seed: 0x33), at: data)
      func request(type: UInt32, sector: UInt64) throws {
        try g.memory.store(type, at: header)
        try g.memory.store(UInt32(0), at: header + 4)
        try g.memory.store(sector, at: header + 8)
        try g.memory.store(UInt8(0xee), at: status)
      }
      /// Submits `chain` and returns its used length and the status byte the device left.
      func submit(_ chain: [DriverBuffer]) throws -> (used: UInt32, status: UInt8) {
        _ = try blk.queue.ring.add(chain)
        try blk.queue.notifyIfNeeded()
        let used = try blk.queue.waitUsed(timeoutMilliseconds: 5000)
        #expect(used.count == 1)
        return (used.first?.length ?? 0xffff_ffff, try g.memory.load(UInt8.self, at: status))
      }
      let hdr = DriverBuffer(guestAddress: g.gpa(header), length: 16, deviceWritable: false)
      let out = DriverBuffer(guestAddress: g.gpa(data), length: 4096, deviceWritable: false)
      let st = DriverBuffer(guestAddress: g.gpa(status), length: 1, deviceWritable: true)
      let errorsBefore = device.stats.errors

      // A write whose data descriptor points outside guest memory: the chain is refused whole.
      try request(type: 1, sector: 8)
      let outside = try submit([
        hdr, DriverBuffer(guestAddress: 0x7fff_0000_0000, length: 4096, deviceWritable: false), st,
      ])
      #expect(outside.used == 0 && outside.status == 0xee, "\(outside)")
      // A write with a zero-length status descriptor: nowhere to put a status, so nothing is done.
      try request(type: 1, sector: 16)
      let zeroStatus = try submit([
        hdr, out, DriverBuffer(guestAddress: g.gpa(status), length: 0, deviceWritable: true),
      ])
      #expect(zeroStatus.used == 0, "\(zeroStatus)")
      // A write whose status descriptor is read-only (driver → device): refused, not performed.
      try request(type: 1, sector: 24)
      let readOnlyStatus = try submit([
        hdr, out, DriverBuffer(guestAddress: g.gpa(status), length: 1, deviceWritable: false),
      ])
      #expect(readOnlyStatus.used == 0 && readOnlyStatus.status == 0xee, "\(readOnlyStatus)")
      // A read of sector 2^32 (and a write there): IOERR.
      try request(type: 0, sector: 1 << 32)
      let farRead = try submit([hdr, DriverBuffer(guestAddress: g.gpa(data), length: 512, deviceWritable: true), st])
      #expect(farRead.status == 1, "\(farRead)")
      try request(type: 1, sector: 1 << 32)
      let farWrite = try submit([hdr, out, st])
      #expect(farWrite.status == 1, "\(farWrite)")
      // A header shorter than 16 bytes.
      try request(type: 1, sector: 0)
      let shortHeader = try submit([
        DriverBuffer(guestAddress: g.gpa(header), length: 8, deviceWritable: false), out, st,
      ])
      #expect(shortHeader.status != 0, "\(shortHeader)")

      #expect(device.stats.errors > errorsBefore)
      // Nothing above reached the image; the device still serves.
      #expect(try readFile(image, offset: 0, count: Self.size) == before, "the image changed")
      let d = pattern(4096, seed: 78)
      try blk.write(offset: 4096, data: d)
      #expect(try blk.read(offset: 4096, length: 4096) == d)
    }
  }

  @Test("read-only export: writes, discards and write-zeroes fail; RO feature offered")
  func readOnly() throws {
    try Self.withDisk(readOnly: true) { blk, image, _ in
      #expect(blk.device.frontend.state.backendFeatures.contains(VirtioFeatures(bit: 5)))
      let before = try readFile(image, offset: 0, count: 4096)
      #expect(try blk.request(type: 1, sector: 0, write: pattern(4096, seed: 1)).status == 1)
      #expect(
        try blk.request(type: 13, sector: 0, write: BlkDriver.segment(offset: 0, length: 4096, flags: 0)).status == 1)
      #expect(try readFile(image, offset: 0, count: 4096) == before)
      #expect(try blk.read(offset: 0, length: 4096) == before)
    }
  }

  @Test("config space: capacity, seg_max, blk_size, num_queues, discard limits")
  func config() throws {
    try Self.withDisk { blk, _, _ in
      let c = try BlkConfig(bytes: try blk.device.frontend.getConfig(size: BlkConfig.size))
      #expect(c.capacity == UInt64(Self.size / 512))
      #expect(c.blkSize == 512)
      #expect(c.segMax > 0)
      #expect(c.numQueues == 1)
      #expect(c.maxDiscardSectors > 0 && c.maxWriteZeroesSectors > 0)
    }
  }

  @Test("CONFIG_WCE: the writeback byte switches to writethrough (each write made durable); other fields refused")
  func cacheMode() throws {
    try Self.withDisk(features: [VirtioFeatures(bit: 11), VirtioFeatures(bit: 14)]) { blk, image, device in
      let frontend = blk.device.frontend
      #expect(frontend.state.backendFeatures.contains(VirtioFeatures(bit: 11)))
      #expect(try frontend.getConfig(offset: 32, size: 1) == [1])  // writeback by default
      let data = pattern(4096, seed: 3)
      try blk.write(offset: 0, data: data)
      #expect(device.stats.writethroughSyncs == 0)
      try frontend.setConfig(offset: 32, bytes: [0])
      #expect(try frontend.getConfig(offset: 32, size: 1) == [0])
      #expect(!device.isWriteback)
      try blk.write(offset: 4096, data: data)
      try blk.writeZeroes(offset: 8192, length: 4096)
      #expect(device.stats.writethroughSyncs == 2)
      #expect(try readFile(image, offset: 4096, count: 4096) == data)
      // Only the writeback byte is writable.
      #expect(throws: FrontendError.self) { try frontend.setConfig(offset: 0, bytes: [0, 0, 0, 0, 0, 0, 0, 0]) }
      #expect(throws: FrontendError.self) { try frontend.setConfig(offset: 32, bytes: [1, 0]) }
      try frontend.setConfig(offset: 32, bytes: [1])
      #expect(device.isWriteback)
      try blk.write(offset: 0, data: data)
      #expect(device.stats.writethroughSyncs == 2)
    }
    // Without CONFIG_WCE negotiated the byte is not writable, and the mode follows FLUSH.
    try Self.withDisk { blk, _, device in
      #expect(throws: FrontendError.self) { try blk.device.frontend.setConfig(offset: 32, bytes: [0]) }
      #expect(device.isWriteback)
    }
    // Read-only exports neither offer CONFIG_WCE nor accept the write.
    try Self.withDisk(readOnly: true) { blk, _, _ in
      let frontend = blk.device.frontend
      #expect(!frontend.state.backendFeatures.contains(VirtioFeatures(bit: 11)))
      #expect(throws: FrontendError.self) { try frontend.setConfig(offset: 32, bytes: [0]) }
    }
  }
}
