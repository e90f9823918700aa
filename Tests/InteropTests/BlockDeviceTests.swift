import Foundation
import Testing
import VhostBackend
import VhostDevices
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTooling

/// `vhost-user blk` serving a real block device: a loop device (losetup, root) over a file.
@Suite(.serialized)
struct BlockDeviceTests {
  static let size = 32 << 20

  /// A loop device attached to `file`, detached when this goes away.
  final class LoopDevice {
    let path: String
    let losetup: String
    init?(file: String, log: String) throws {
      guard let losetup = Peers.require("losetup", package: "mount") else { return nil }
      self.losetup = losetup
      guard getuid() == 0 else {
        let message = "loop devices need root"
        if Peers.required { Issue.record(Comment(rawValue: message)) } else { print("SKIP: \(message)") }
        return nil
      }
      let p = try ManagedProcess(losetup, ["--find", "--show", file], logPath: log)
      guard p.waitExit(milliseconds: 10_000), p.waitStatus == 0 else {
        Issue.record("losetup --find --show failed: \(p.output)")
        return nil
      }
      path = p.output.trimmingCharacters(in: .whitespacesAndNewlines)
    }
    deinit {
      if let p = try? ManagedProcess(losetup, ["--detach", path], logPath: "/dev/null") {
        _ = p.waitExit(milliseconds: 10_000)
      }
    }
  }

  @Test(
    "a loop block device: size from the device, data through the ring reaches the backing file",
    arguments: [false, true])
  func loopDevice(direct: Bool) throws {
    let dir = try TemporaryDirectory()
    let file = dir.file("backing.img")
    try makeImage(file, size: Self.size)
    guard let loop = try LoopDevice(file: file, log: dir.file("losetup.log")) else { return }
    #expect(loop.path.hasPrefix("/dev/loop"))
    let device = try BlkDevice(path: loop.path, serial: "loop", direct: direct, ioThreads: direct ? 4 : 0)
    let socket = dir.file("blk.sock")
    let server = BackendServer(listener: try UnixListener(path: socket), device: device)
    server.startInBackground()
    defer { server.stopAndWait() }
    let connection = try VhostUserConnection.connect(path: socket, retryMilliseconds: 2000)
    defer { connection.close() }
    let frontend = connection.device()
    let driver = try DeviceDriver(
      frontend: frontend, features: BlkDriver.defaultFeatures.union(.eventIdx), queueCount: 1, queueSize: 128,
      memorySize: 8 << 20)
    let config = try BlkConfig(bytes: try frontend.getConfig(size: BlkConfig.size))
    // The capacity is the block device's size (lseek(SEEK_END) on /dev/loopN), in 512-byte sectors.
    #expect(config.capacity == UInt64(Self.size / 512))
    let blk = try BlkDriver(device: driver)
    // What the image holds is what the device reads.
    #expect(try blk.read(offset: 5 << 20, length: 64 << 10) == (try readFile(file, offset: 5 << 20, count: 64 << 10)))
    let data = pattern(1 << 20, seed: direct ? 5 : 6)
    try blk.write(offset: 3 << 20, data: data)
    try blk.flush()
    #expect(try blk.read(offset: 3 << 20, length: data.count) == data)
    // The last sector is writable; one past it is an I/O error.
    let sectors = UInt64(Self.size / 512)
    #expect(try blk.request(type: 1, sector: sectors - 1, write: pattern(512, seed: 1)).status == 0)
    #expect(try blk.request(type: 1, sector: sectors, write: pattern(512, seed: 1)).status == 1)
    _ = try driver.stop()
    connection.close()
    server.stopAndWait()
    // After FLUSH (fdatasync on the device) the backing file holds the data.
    let fd = open(loop.path, O_RDONLY)
    if fd >= 0 {
      _ = fsync(fd)
      close(fd)
    }
    #expect(try readFile(file, offset: 3 << 20, count: data.count) == data)
  }
}
