import ArgumentParser
import VhostFrontend
import VhostProtocol
import VhostSystem

struct Bench: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Benchmarks driven by our front-end.", subcommands: [BenchBlk.self])
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
