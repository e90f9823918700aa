import ArgumentParser
import VhostBackend
import VhostDevices
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTooling

struct Demo: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Start our vhost-user-blk back-end on a temporary image, drive it with our front-end, verify, clean up.")

  @Option(help: "Image size in MiB.") var sizeMib = 64
  @Option(help: "Seconds of 4 KiB random reads for the IOPS figure.") var seconds = 2.0
  @Flag(help: "Drive qemu-storage-daemon instead of our back-end (if installed).") var qsd = false

  func run() throws {
    guard sizeMib >= 16 else { throw ValidationError("--size-mib must be at least 16") }
    let dir = try TemporaryDirectory(prefix: "vhost-user-demo")
    let image = dir.file("disk.img")
    try createSparseFile(image, size: UInt64(sizeMib) << 20)
    let socket = dir.file("blk.sock")
    var server: BackendServer?
    var peer: ManagedProcess?
    if qsd {
      print("== back-end: qemu-storage-daemon exporting a \(sizeMib) MiB image at \(socket)")
      peer = try startQemuStorageDaemon(image: image, socket: socket, log: dir.file("backend.log"))
      guard let peer, peer.waitForFile(socket, milliseconds: 10_000) else {
        throw CLIError("qemu-storage-daemon did not start (apt-get install qemu-system-x86)")
      }
    } else {
      print("== back-end: our vhost-user-blk (in this process) on a \(sizeMib) MiB image at \(socket)")
      let device = try BlkDevice(path: image, serial: "demo-disk")
      let s = BackendServer(listener: try UnixListener(path: socket), device: device)
      s.startInBackground()
      server = s
    }
    defer {
      server?.stopAndWait()
      peer?.stop()
    }

    let connection = try VhostUserConnection.connect(path: socket, retryMilliseconds: 5000)
    defer { connection.close() }
    let frontend = connection.device()
    let state = try frontend.negotiate()
    print("== negotiation (our front-end)")
    print("virtio features offered:   0x\(String(state.backendFeatures.rawValue, radix: 16))")
    print("  " + state.backendFeatures.names(for: .blk).joined(separator: " "))
    print("protocol features offered: \(state.backendProtocolFeatures)")
    print("protocol features in use:  \(state.protocolFeatures)")
    if let q = state.maxQueues { print("queues: \(q)") }
    if let s = state.maxMemSlots { print("memory slots: \(s)") }
    let device = try DeviceDriver(
      frontend: frontend, features: BlkDriver.defaultFeatures.union(.eventIdx), queueCount: 1, queueSize: 128,
      memorySize: 8 << 20)
    print("virtio features acked:     0x\(String(device.ackedFeatures.rawValue, radix: 16))")
    let config = try BlkConfig(bytes: try frontend.getConfig(size: BlkConfig.size))
    print("capacity: \(config.capacity) sectors (\((config.capacity * 512) >> 20) MiB)")

    let blk = try BlkDriver(device: device)
    if !qsd { print("serial (GET_ID): \(try blk.getID())") }
    print("== data")
    var data = [UInt8](repeating: 0, count: 1 << 20)
    var x: UInt32 = 2_463_534_242
    for i in data.indices {
      x ^= x << 13
      x ^= x >> 17
      x ^= x << 5
      data[i] = UInt8(truncatingIfNeeded: x)
    }
    let offsets: [UInt64] = [0, 7 << 20, UInt64(sizeMib - 1) << 20]
    for o in offsets { try blk.write(offset: o, data: data) }
    try blk.flush()
    for o in offsets {
      guard try blk.read(offset: o, length: data.count) == data else { throw CLIError("read-back mismatch at \(o)") }
    }
    for o in offsets {
      guard try readFileBytes(image, offset: o, count: data.count) == data else {
        throw CLIError("image file differs at \(o)")
      }
    }
    print("wrote 1 MiB at \(offsets.count) offsets, flushed, read back through the ring and from the image: identical")

    print("== 4 KiB random reads, queue depth 1, \(seconds) s")
    let sectors = UInt64(sizeMib) << 11
    var ios = 0
    let start = monotonicSeconds()
    var rng = SystemRandomNumberGenerator()
    while monotonicSeconds() - start < seconds {
      _ = try blk.read(offset: UInt64.random(in: 0..<(sectors / 8), using: &rng) * 4096, length: 4096)
      ios += 1
    }
    let elapsed = monotonicSeconds() - start
    print("\(ios) reads in \(decimal(elapsed, 2)) s: \(Int((Double(ios) / elapsed).rounded())) IOPS")
    _ = try device.stop()
    print("== done; cleaning up")
  }
}
