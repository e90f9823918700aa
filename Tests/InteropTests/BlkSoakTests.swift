import Foundation
import Testing
import VhostBackend
import VhostDevices
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTooling

/// A long mixed-I/O soak of the blk back-end with every byte verified against a model of the disk.
/// Runs only when VHOST_SOAK_SECONDS is set (scripts/soak-blk.sh); CI runs a 5-second version.
@Suite struct BlkSoakTests {
  static var seconds: Double {
    Double(ProcessInfo.processInfo.environment["VHOST_SOAK_SECONDS"] ?? "") ?? 5
  }

  @Test("mixed random reads/writes/flushes/discards, data verified against a model", arguments: [0, 4])
  func soak(ioThreads: Int) throws {
    let dir = try TemporaryDirectory()
    let image = dir.file("disk.img")
    let blocks = 2048  // 8 MiB of 4 KiB blocks
    try makeImage(image, size: blocks * 4096)
    var model = [[UInt8]]()
    for i in 0..<blocks { model.append(try readFile(image, offset: UInt64(i) * 4096, count: 4096)) }
    let device = try BlkDevice(path: image, ioThreads: ioThreads)
    let socket = dir.file("blk.sock")
    let server = BackendServer(listener: try UnixListener(path: socket), device: device)
    server.startInBackground()
    defer { server.stopAndWait() }
    let connection = try VhostUserConnection.connect(path: socket, retryMilliseconds: 2000)
    defer { connection.close() }
    let driver = try DeviceDriver(
      frontend: connection.device(), features: BlkDriver.defaultFeatures.union([.eventIdx, VirtioFeatures(bit: 13)]),
      queueCount: 1, queueSize: 256, memorySize: 16 << 20)
    let blk = try BlkDriver(device: driver, maxTransfer: 64 << 10)
    var rng = SystemRandomNumberGenerator()
    let end = Date().addingTimeInterval(Self.seconds)
    var ops = (reads: 0, writes: 0, flushes: 0, discards: 0, verified: 0)
    while Date() < end {
      let block = Int.random(in: 0..<blocks - 16, using: &rng)
      let count = Int.random(in: 1...16, using: &rng)
      switch Int.random(in: 0..<100, using: &rng) {
      case 0..<45:
        var data: [UInt8] = []
        for b in 0..<count {
          let d = (0..<4096).map { _ in UInt8.random(in: 0...255, using: &rng) }
          model[block + b] = d
          data += d
        }
        try blk.write(offset: UInt64(block) * 4096, data: data)
        ops.writes += 1
      case 45..<95:
        let got = try blk.read(offset: UInt64(block) * 4096, length: count * 4096)
        let want = model[block..<block + count].flatMap { $0 }
        #expect(got == want, "block \(block)+\(count) differs")
        if got != want { return }
        ops.reads += 1
      case 95..<98:
        try blk.flush()
        ops.flushes += 1
      default:
        try blk.writeZeroes(offset: UInt64(block) * 4096, length: UInt64(count) * 4096)
        for b in 0..<count { model[block + b] = [UInt8](repeating: 0, count: 4096) }
        ops.discards += 1
      }
    }
    // Finally the whole image file equals the model.
    for i in 0..<blocks {
      if try readFile(image, offset: UInt64(i) * 4096, count: 4096) != model[i] {
        Issue.record("image block \(i) differs from the model")
        return
      }
      ops.verified += 1
    }
    print("soak (io threads \(ioThreads), \(Self.seconds) s): \(ops)")
    #expect(device.stats.errors == 0)
  }
}
