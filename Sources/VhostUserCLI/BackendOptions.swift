import ArgumentParser
import Logging
import VhostBackend
import VhostSystem

#if canImport(Glibc)
  import Glibc
#endif

/// The options every back-end takes (QEMU's "backend program conventions" plus ours).
struct BackendOptions: ParsableArguments {
  @Option(
    name: [.customShort("s"), .long],
    help: "Listen on this Unix socket path (repeat to serve several sockets, each its own device).")
  var socketPath: [String] = []
  @Option(help: "Serve an inherited listening socket on this file descriptor.") var fd: Int32?
  @Flag(help: "Print the backend capabilities JSON and exit.") var printCapabilities = false
  @Flag(help: "Busy-poll the rings instead of waiting for kicks.") var poll = false
  @Option(help: "Queues served by one worker thread.") var queuesPerThread = 1
  @Flag(help: "Do not offer VIRTIO_F_RING_PACKED.") var noPacked = false
  @Option(
    help: "Log level: error, warn, info, debug or trace (default info; environment: VHOST_USER_LOG).")
  var logLevel: String?
  @Flag(help: "Same as --log-level debug.") var verbose = false

  func validate() throws {
    if printCapabilities { return }
    if socketPath.isEmpty && fd == nil { throw ValidationError("give --socket-path (one or more) or --fd") }
    if !socketPath.isEmpty && fd != nil { throw ValidationError("give --socket-path or --fd, not both") }
    if queuesPerThread < 1 { throw ValidationError("--queues-per-thread must be at least 1") }
    if let logLevel, Self.level(logLevel) == nil {
      throw ValidationError("--log-level must be error, warn, info, debug or trace (not \(logLevel))")
    }
  }

  static func level(_ name: String) -> Logger.Level? {
    switch name.lowercased() {
    case "error": .error
    case "warn", "warning": .warning
    case "info": .info
    case "debug": .debug
    case "trace": .trace
    default: nil
    }
  }

  /// The level asked for: --verbose, then --log-level, then VHOST_USER_LOG, then info.
  var effectiveLevel: Logger.Level {
    if verbose { return .debug }
    if let logLevel, let l = Self.level(logLevel) { return l }
    if let env = getenv("VHOST_USER_LOG").map({ String(cString: $0) }), let l = Self.level(env) { return l }
    return .info
  }

  func logger(socket: String?) -> Logger {
    var logger = Logger(label: "vhost-user")
    logger.logLevel = effectiveLevel
    if let socket { logger[metadataKey: "socket"] = "\(socket)" }
    return logger
  }

  var configuration: BackendConfiguration { configuration(socket: nil) }

  func configuration(socket: String?) -> BackendConfiguration {
    var c = BackendConfiguration()
    c.poll = poll
    c.queuesPerThread = queuesPerThread
    c.offerPacked = !noPacked
    c.logger = logger(socket: socket)
    return c
  }

  /// Prints capabilities, or serves `device` on every socket until SIGTERM/SIGINT/SIGHUP (one shared
  /// device); SIGUSR1 prints `status()`.
  func serve(_ device: VhostUserDevice, status: (@Sendable () -> String)? = nil) throws {
    try serve({ device }, status: status)
  }

  /// Prints capabilities, or serves one device per socket (made by `makeDevice`) until
  /// SIGTERM/SIGINT/SIGHUP. Each socket takes one front-end at a time. Socket paths are only
  /// replaced when they are stale sockets, each is locked against a second instance, and whatever
  /// this run created is removed when it ends — also when start-up fails half-way.
  func serve(_ makeDevice: () throws -> VhostUserDevice, status: (@Sendable () -> String)? = nil) throws {
    if printCapabilities {
      let device = try makeDevice()
      let features = device.capabilityFeatures.map { "\"\($0)\"" }.joined(separator: ", ")
      print("{\n  \"type\": \"\(device.type)\",\n  \"features\": [\(features)]\n}")
      return
    }
    DaemonSignals.blockTermination()
    let resources = DaemonResources()
    defer { resources.release() }
    var servers: [BackendServer] = []
    if let fd {
      guard UnixListener.isListeningSocket(fd) else {
        throw CLIError("--fd \(fd) is not a listening Unix stream socket")
      }
      servers.append(
        BackendServer(
          listener: UnixListener(inheriting: OwnedFD(taking: fd)), device: try makeDevice(),
          configuration: configuration(socket: "fd \(fd)")))
    }
    for path in socketPath {
      let listener = try resources.listen(path)
      servers.append(
        BackendServer(
          listener: listener, device: try makeDevice(),
          configuration: configuration(socket: socketPath.count > 1 ? path : nil)))
    }
    let all = servers
    let log = logger(socket: nil)
    var onStatus: (@Sendable () -> Void)?
    if let status { onStatus = { writeStandardError(status() + "\n") } }
    DaemonSignals.start(
      onTerminate: { name in
        log.info("\(name): stopping")
        for s in all { s.stop() }
      }, onStatus: onStatus)
    for s in servers.dropLast() { s.startInBackground() }
    debugTrapIfAsked()
    log.info("serving \(socketPath.isEmpty ? "fd \(fd ?? -1)" : socketPath.joined(separator: ", "))")
    servers.last?.run()
    for s in servers.dropLast() { s.stopAndWait() }
    if let status { writeStandardError(status() + "\n") }
  }
}

/// What a daemon run created on disk (sockets, their lock files), removed when it ends.
final class DaemonResources {
  private var sockets: [String] = []
  private var locks: [InstanceLock] = []

  /// Locks `path` against a second instance, then listens on it (a stale socket is replaced,
  /// anything else refused).
  func listen(_ path: String) throws -> UnixListener {
    let lock = try InstanceLock(socketPath: path)
    locks.append(lock)
    let listener: UnixListener
    do {
      listener = try UnixListener(path: path)
    } catch {
      throw CLIError("\(error)")
    }
    sockets.append(path)
    return listener
  }

  func release() {
    for path in sockets { unlink(path) }
    for lock in locks { lock.release() }
    sockets = []
    locks = []
  }
}
