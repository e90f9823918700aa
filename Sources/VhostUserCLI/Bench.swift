import ArgumentParser
import VhostFrontend
import VhostProtocol
import VhostSystem

struct Bench: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Benchmarks driven by our front-end.", subcommands: [BenchBlk.self, BenchNet.self])
}

struct BenchBlk: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "blk", abstract: "Load any vhost-user-blk back-end like fio and report IOPS, MB/s and latency.")
  @Option(help: "The back-end's socket.") var socketPath: String
  @Option(help: "randread, randwrite, read or write.") var rw = "randread"
  @Option(help: "Block size in bytes.") var bs = 4096
  @Option(help: "Requests in flight per queue.") var iodepth = 32
  @Option(help: "Run time in seconds.") var seconds = 5.0
  @Option(help: "Queues to drive.") var queues = 1
  @Flag(help: "Print one JSON object.") var json = false

  func run() throws {
    guard let pattern = BlkLoadGenerator.Pattern(rawValue: rw) else {
      throw ValidationError("--rw must be one of \(BlkLoadGenerator.Pattern.allCases.map(\.rawValue))")
    }
    let connection = try VhostUserConnection.connect(path: socketPath, retryMilliseconds: 5000)
    defer { connection.close() }
    let frontend = connection.device()
    let state = try frontend.negotiate()
    if queues > 1 && (state.maxQueues ?? 1) < UInt64(queues) {
      throw CLIError("back-end offers \(state.maxQueues ?? 1) queues, asked for \(queues)")
    }
    var size: UInt16 = 128
    while Int(size) < iodepth * 3 { size *= 2 }
    var features = BlkDriver.defaultFeatures.union(.eventIdx)
    if queues > 1 { features.insert(VirtioFeatures(bit: 12)) }
    let device = try DeviceDriver(
      frontend: frontend, features: features, queueCount: queues, queueSize: size,
      memorySize: max(16 << 20, queues * iodepth * (bs + 4096) * 2 + (4 << 20)))
    let config = try BlkConfig(bytes: try frontend.getConfig(size: BlkConfig.size))
    let generator = try BlkLoadGenerator(
      device: device, pattern: pattern, blockSize: bs, depth: iodepth, capacityBytes: config.capacity * 512)
    let r = try generator.run(seconds: seconds)
    _ = try? device.stop()
    if json {
      print(
        "{\"iops\":\(decimal(r.iops, 0)),\"mbps\":\(decimal(r.megabytesPerSecond, 1)),"
          + "\"p50_us\":\(decimal(r.p50Microseconds, 0)),\"p99_us\":\(decimal(r.p99Microseconds, 0)),"
          + "\"ios\":\(r.ios),\"errors\":\(r.errors),\"seconds\":\(decimal(r.seconds, 2))}")
    } else {
      print(
        "\(rw) bs=\(bs) iodepth=\(iodepth) queues=\(queues): \(decimal(r.iops, 0)) IOPS, "
          + "\(decimal(r.megabytesPerSecond, 1)) MB/s, p50 \(decimal(r.p50Microseconds, 0)) us, "
          + "p99 \(decimal(r.p99Microseconds, 0)) us, \(r.errors) errors")
    }
  }
}

struct BenchNet: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "net",
    abstract: "Transmit frames into any vhost-user-net back-end as fast as it takes them (like testpmd txonly).")
  @Option(help: "The back-end's socket.") var socketPath: String
  @Option(help: "Run time in seconds.") var seconds = 5.0
  @Option(help: "Frame size in bytes (without the virtio-net header).") var size = 64
  @Option(help: "Descriptors in the transmit ring (a power of two).") var queueSize = 256
  @Option(help: "Frames published per burst.") var burst = 32
  @Flag(help: "Print one JSON object.") var json = false

  func validate() throws {
    guard (60...9000).contains(size) else { throw ValidationError("--size must be 60...9000") }
    guard queueSize >= 2, queueSize <= 32768, queueSize & (queueSize - 1) == 0 else {
      throw ValidationError("--queue-size must be a power of two up to 32768")
    }
    guard (1...1024).contains(burst) else { throw ValidationError("--burst must be 1...1024") }
  }

  /// An Ethernet/IPv4/UDP frame of `size` bytes, as testpmd's txonly builds them.
  static func frame(size: Int) -> [UInt8] {
    var f: [UInt8] = [0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00]
    let ipLength = size - 14
    f += [
      0x45, 0, UInt8(ipLength >> 8), UInt8(ipLength & 0xff), 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
    ]
    var sum: UInt32 = 0
    for i in stride(from: 14, to: 34, by: 2) { sum += UInt32(f[i]) << 8 | UInt32(f[i + 1]) }
    while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
    f[24] = UInt8(~sum >> 8 & 0xff)
    f[25] = UInt8(~sum & 0xff)
    let udpLength = ipLength - 20
    f += [0x04, 0x00, 0x04, 0x00, UInt8(udpLength >> 8), UInt8(udpLength & 0xff), 0, 0]
    f += [UInt8](repeating: 0, count: size - f.count)
    return f
  }

  func run() throws {
    let connection = try VhostUserConnection.connect(path: socketPath, retryMilliseconds: 5000)
    defer { connection.close() }
    let frontend = connection.device()
    try frontend.negotiate()
    let device = try DeviceDriver(
      frontend: frontend, features: NetDriver.defaultFeatures, queueCount: 2, queueSize: UInt16(queueSize),
      memorySize: max(8 << 20, queueSize * 2 * 2048 + (4 << 20)))
    let net = try NetDriver(device: device)
    // Receive buffers too: a back-end whose port comes up only with both rings set up (DPDK's
    // vhost PMD) gets them.
    try net.refillRx()
    let r = try net.generate(Self.frame(size: size), seconds: seconds, burst: burst)
    _ = try? device.stop()
    if json {
      print(
        "{\"pps\":\(decimal(r.packetsPerSecond, 0)),\"packets\":\(r.packets),\"bytes\":\(r.bytes),"
          + "\"kicks\":\(r.kicks),\"seconds\":\(decimal(r.seconds, 2))}")
    } else {
      print(
        "net tx \(size)-byte frames: \(decimal(r.packetsPerSecond / 1e6, 3)) Mpps (\(r.packets) packets in "
          + "\(decimal(r.seconds, 2)) s, \(r.kicks) kicks)")
    }
  }
}
