import Logging
import Synchronization
import VhostSystem

#if canImport(Glibc)
  import Glibc
#endif

/// Serves a device on a listening socket, one front-end at a time. When the front-end goes away
/// the device is reset and the next connection is served (QEMU's reconnect).
public final class BackendServer: @unchecked Sendable {
  public let listener: UnixListener
  public let device: VhostUserDevice
  public let configuration: BackendConfiguration
  private let stopping = Atomic<Bool>(false)
  private let lock = Lock()
  private var current: BackendSession?
  /// Connections served so far.
  public private(set) var connectionsServed = 0
  /// Called with each session before it runs (tests and the CLI use it).
  public var onSession: (@Sendable (BackendSession) -> Void)?

  public init(listener: UnixListener, device: VhostUserDevice, configuration: BackendConfiguration = .init()) {
    self.listener = listener
    self.device = device
    self.configuration = configuration
  }

  /// Accepts and serves connections until `stop()`.
  public func run() {
    while !stopping.load(ordering: .acquiring) {
      let socket: UnixSocket?
      do {
        socket = try listener.accept(timeoutMilliseconds: 200)
      } catch {
        // Out of descriptors or memory: that connection is lost, the server is not. Back off
        // (the pending connection keeps the listener readable) and try again.
        if [EMFILE, ENFILE, ENOBUFS, ENOMEM, EPROTO, EPERM].contains(error.errno) {
          configuration.logger.error("accept: \(error); retrying")
          _ = poll(nil, 0, 100)
          continue
        }
        configuration.logger.error("accept: \(error)")
        return
      }
      guard let socket else { continue }
      device.reset()
      let session = BackendSession(device: device, socket: socket, configuration: configuration)
      lock.withLock {
        current = session
        connectionsServed += 1
      }
      if stopping.load(ordering: .acquiring) { return }
      onSession?(session)
      configuration.logger.info("front-end connected")
      session.run()
      lock.withLock { current = nil }
    }
  }

  /// Ends `run()` (from any thread, e.g. a signal-handling thread).
  public func stop() {
    stopping.store(true, ordering: .releasing)
    lock.withLock { current?.shutdown() }
  }

  private let finished = Condition()
  private var runningThread = false

  /// Runs the server on a thread of its own (embedding it in a process that does other things).
  public func startInBackground() {
    finished.withLock { runningThread = true }
    do {
      try SystemThread.start(name: "vhost-server") { [self] in
        run()
        finished.withLock {
          runningThread = false
          finished.broadcast()
        }
      }
    } catch {
      configuration.logger.error("cannot start the server thread: \(error)")
      finished.withLock { runningThread = false }
    }
  }

  /// `stop()`, then waits until a server started with `startInBackground()` has ended.
  public func stopAndWait() {
    stop()
    finished.withLock {
      while runningThread { _ = finished.wait(until: .after(milliseconds: 1000)) }
    }
  }

  /// The session being served, if any.
  public var currentSession: BackendSession? { lock.withLock { current } }
}
