import ArgumentParser
import VhostDevices
import VhostSystem

#if canImport(Glibc)
  import Glibc
#endif

struct Blk: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "A virtio-blk back-end serving a disk image or block device.")
  @OptionGroup var options: BackendOptions
  @Option(help: "The image file or block device.") var blkFile: String?
  @Flag(help: "Export read-only.") var readOnly = false
  @Option(help: "Number of queues.") var numQueues = 1
  @Option(help: "Largest ring size a front-end may set up (a power of two, 1...32768).") var queueSize = 1024
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
    guard (1...32768).contains(queueSize), queueSize & (queueSize - 1) == 0 else {
      throw ValidationError("--queue-size must be a power of two in 1...32768")
    }
    if let socket = options.socketPath.first, sameFile(socket, blkFile) {
      throw CLIError("--socket-path \(socket) is the image given as --blk-file; refusing to replace it")
    }
    var st = stat()
    guard stat(blkFile, &st) == 0 else {
      throw CLIError("cannot open \(blkFile): \(SystemError.current("stat").description)")
    }
    let kind = st.st_mode & S_IFMT
    guard kind == S_IFREG || kind == S_IFBLK else {
      throw CLIError("\(blkFile) is not a regular file or a block device")
    }
    if kind == S_IFREG && st.st_size == 0 { throw CLIError("\(blkFile) is empty (0 bytes): nothing to export") }
    if kind == S_IFREG && st.st_size % 512 != 0 {
      writeStandardError(
        "warning: \(blkFile) is \(st.st_size) bytes, not a multiple of 512: the last \(st.st_size % 512) bytes are not exported\n"
      )
    }
    let imageLock = try ImageLock(path: blkFile, readOnly: readOnly)
    // The I/O threads start with the device: SIGTERM/SIGINT/SIGHUP must be blocked before.
    DaemonSignals.blockTermination()
    let device = try BlkDevice(
      path: blkFile, readOnly: readOnly, numQueues: numQueues, queueSize: queueSize, serial: serial, direct: direct,
      ioThreads: ioThreads ?? (direct ? 8 : 0))
    try options.serve(device, status: { Self.report(device) })
    withExtendedLifetime(imageLock) {}
  }

  static func report(_ device: BlkDevice) -> String {
    let s = device.stats
    return
      "blk: \(s.reads) reads, \(s.writes) writes, \(s.flushes) flushes, \(s.writethroughSyncs) writethrough syncs, "
      + "\(s.errors) I/O errors, \(s.unsupported) unsupported requests"
  }
}
