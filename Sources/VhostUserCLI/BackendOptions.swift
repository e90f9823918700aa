import ArgumentParser
import Logging
import VhostBackend
import VhostSystem

#if canImport(Glibc)
  import Glibc
#endif

/// The options every back-end takes (QEMU's "backend program conventions" plus ours).
struct BackendOptions: ParsableArguments {
  @Option(help: "Listen on this Unix socket path (repeat to serve several sockets, each its own device).")
  var socketPath: [String] = []
  @Option(help: "Serve an inherited listening socket on this file descriptor.") var fd: Int32?
  @Flag(help: "Print the backend capabilities JSON and exit.") var printCapabilities = false
  @Flag(help: "Busy-poll the rings instead of waiting for kicks.") var poll = false
  @Option(help: "Queues served by one worker thread.") var queuesPerThread = 1
  @Flag(help: "Do not offer VIRTIO_F_RING_PACKED.") var noPacked = false
  @Flag(help: "Log every refused request and connection event.") var verbose = false

  func validate() throws {
    if printCapabilities { return }
    if socketPath.isEmpty == (fd == nil) { throw ValidationError("give --socket-path (one or more) or --fd, not both") }
    if queuesPerThread < 1 { throw ValidationError("--queues-per-thread must be at least 1") }
  }

  var configuration: BackendConfiguration {
    var c = BackendConfiguration()
    c.poll = poll
    c.queuesPerThread = queuesPerThread
    c.offerPacked = !noPacked
    var logger = Logger(label: "vhost-user")
    logger.logLevel = verbose ? .info : .error
    c.logger = logger
    return c
  }

  /// Prints capabilities, or serves `device` on every socket until SIGTERM/SIGINT (one shared device).
  func serve(_ device: VhostUserDevice) throws { try serve { device } }

  /// Prints capabilities, or serves one device per socket (made by `makeDevice`) until
  /// SIGTERM/SIGINT. Each socket takes one front-end at a time.
  func serve(_ makeDevice: () throws -> VhostUserDevice) throws {
    if printCapabilities {
      let device = try makeDevice()
      let features = device.capabilityFeatures.map { "\"\($0)\"" }.joined(separator: ", ")
      print("{\n  \"type\": \"\(device.type)\",\n  \"features\": [\(features)]\n}")
      return
    }
    var servers: [BackendServer] = []
    if let fd {
      servers.append(
        BackendServer(
          listener: UnixListener(inheriting: OwnedFD(taking: fd)), device: try makeDevice(),
          configuration: configuration))
    }
    for path in socketPath {
      servers.append(
        BackendServer(listener: try UnixListener(path: path), device: try makeDevice(), configuration: configuration))
    }
    let all = servers
    SignalThread.start { for s in all { s.stop() } }
    for s in servers.dropLast() { s.startInBackground() }
    servers.last?.run()
    for s in servers.dropLast() { s.stopAndWait() }
    for path in socketPath { unlink(path) }
  }
}

/// Blocks SIGTERM/SIGINT in every thread and waits for them on one thread (sigwait), so a signal
/// ends the server cleanly instead of interrupting arbitrary code.
enum SignalThread {
  static func start(_ onSignal: @escaping @Sendable () -> Void) {
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGTERM)
    sigaddset(&set, SIGINT)
    pthread_sigmask(SIG_BLOCK, &set, nil)
    try? SystemThread.start(name: "vhost-signals") {
      var s = sigset_t()
      sigemptyset(&s)
      sigaddset(&s, SIGTERM)
      sigaddset(&s, SIGINT)
      var sig: Int32 = 0
      sigwait(&s, &sig)
      onSignal()
    }
  }
}
