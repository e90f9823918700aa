import Foundation
import Testing
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTooling

/// Our front-end against qemu-storage-daemon's vhost-user-blk export (libvhost-user).
@Suite(.serialized)
struct QemuStorageDaemonTests {
  static let imageSize = 64 << 20

  /// Starts qsd on a fresh image; nil when the peer is missing.
  static func start(_ dir: TemporaryDirectory) throws -> (ManagedProcess, String, String)? {
    guard Peers.require("qemu-storage-daemon", package: "qemu-system-x86 / qemu-utils") != nil else { return nil }
    let image = dir.file("disk.img")
    try makeImage(image, size: imageSize)
    let socket = dir.file("qsd.sock")
    guard let qsd = try startQemuStorageDaemon(image: image, socket: socket, log: dir.file("qsd.log")) else {
      return nil
    }
    #expect(qsd.waitForFile(socket, milliseconds: 10_000), "qsd did not create its socket: \(qsd.output)")
    return (qsd, image, socket)
  }

  func exercise(preferMemorySlots: Bool) throws {
    let dir = try TemporaryDirectory()
    guard let (qsd, image, socket) = try Self.start(dir) else { return }
    defer { qsd.stop() }

    let connection = try VhostUserConnection.connect(path: socket, retryMilliseconds: 5000)
    defer { connection.close() }
    let frontend = connection.device()
    let state = try frontend.negotiate()
    #expect(state.protocolFeaturesEnabled)
    #expect(state.protocolFeatures.contains(.replyAck))
    #expect(state.protocolFeatures.contains(.config))
    // The acked protocol features are the offer masked by ours.
    #expect(
      state.protocolFeatures
        == state.backendProtocolFeatures.intersection(FrontendConfiguration.defaultProtocolFeatures))
    #expect(state.maxQueues == 1)

    let device = try DeviceDriver(
      frontend: frontend, features: BlkDriver.defaultFeatures.union(.eventIdx), queueCount: 1, queueSize: 128,
      memorySize: 8 << 20, preferMemorySlots: preferMemorySlots)
    #expect(device.ackedFeatures.contains(.version1))

    let config = try BlkConfig(bytes: try frontend.getConfig(size: BlkConfig.size))
    #expect(config.capacity * 512 == UInt64(Self.imageSize))

    let blk = try BlkDriver(device: device)
    let offsets: [UInt64] = [0, 5 << 20 + 4096, 33 << 20 + 512, UInt64(Self.imageSize - (1 << 20))]
    for (i, offset) in offsets.enumerated() {
      try blk.write(offset: offset, data: pattern(1 << 20, seed: UInt8(i + 1)))
    }
    try blk.flush()
    for (i, offset) in offsets.enumerated() {
      let expected = pattern(1 << 20, seed: UInt8(i + 1))
      let back = try blk.read(offset: offset, length: 1 << 20)
      #expect(back == expected, "read-back mismatch at \(offset)")
      let onDisk = try readFile(image, offset: offset, count: 1 << 20)
      #expect(onDisk == expected, "image file differs at \(offset)")
    }
    // A byte between the written ranges kept the image's original content.
    let untouched = try blk.read(offset: 20 << 20, length: 4096)
    #expect(untouched == (try readFile(image, offset: 20 << 20, count: 4096)))

    // GET_VRING_BASE stops the ring where the device got to: one avail entry per request.
    let bases = try device.stop()
    #expect(bases == [UInt32(device.queues[0].ring.availIndex)])
  }

  @Test("qsd: negotiation, memory table, virtqueue, 1 MiB writes verified against the image")
  func blockIO() throws { try exercise(preferMemorySlots: false) }

  @Test("qsd: the same with ADD_MEM_REG (CONFIGURE_MEM_SLOTS)")
  func blockIOWithMemSlots() throws { try exercise(preferMemorySlots: true) }

  @Test("qsd: probe decodes features by name and the blk config")
  func probe() throws {
    let dir = try TemporaryDirectory()
    guard let (qsd, _, socket) = try Self.start(dir) else { return }
    defer { qsd.stop() }
    let report = try ProbeReport.collect(path: socket)
    #expect(report.inferredDevice == .blk)
    let text = report.text
    for name in ["VERSION_1", "PROTOCOL_FEATURES", "BLK_FLUSH", "REPLY_ACK", "CONFIG", "CONFIGURE_MEM_SLOTS"] {
      #expect(text.contains(name), "probe text lacks \(name):\n\(text)")
    }
    #expect(text.contains("capacity:         \(Self.imageSize / 512) sectors"))
    #expect(report.json.contains("\"capacity\":\(Self.imageSize / 512)"))
  }
}
