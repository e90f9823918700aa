import ArgumentParser
import VhostDevices

struct Blk: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "A virtio-blk back-end serving a disk image or block device.")
  @OptionGroup var options: BackendOptions
  @Option(help: "The image file or block device.") var blkFile: String?
  @Flag(help: "Export read-only.") var readOnly = false
  @Option(help: "Number of queues.") var numQueues = 1
  @Option(help: "Largest queue size.") var queueSize = 256
  @Option(help: "Serial (GET_ID), up to 20 bytes.") var serial = ""
  @Flag(help: "Open with O_DIRECT.") var direct = false
  @Option(
    help:
      "I/O threads (requests in flight, completing out of order); 0 = on the queue thread. Default: 8 with --direct, else 0."
  )
  var ioThreads: Int?

  func run() throws {
    if options.printCapabilities {
      print("{\n  \"type\": \"block\",\n  \"features\": [\"read-only\", \"blk-file\"]\n}")
      return
    }
    guard let blkFile else { throw ValidationError("--blk-file is required") }
    guard options.socketPath.count <= 1 else {
      throw ValidationError("one --socket-path for blk: two front-ends must not share one image")
    }
    guard (1...64).contains(numQueues) else { throw ValidationError("--num-queues must be 1...64") }
    let device = try BlkDevice(
      path: blkFile, readOnly: readOnly, numQueues: numQueues, queueSize: queueSize, serial: serial, direct: direct,
      ioThreads: ioThreads ?? (direct ? 8 : 0))
    try options.serve(device)
  }
}
