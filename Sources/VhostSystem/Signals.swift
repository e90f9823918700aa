import CVhostShim

#if canImport(Glibc)
  import Glibc
#endif

/// Ignores SIGPIPE for the whole process, once. A peer hands us descriptors (call/err "eventfds",
/// device-state pipes) that may really be sockets or pipes whose other end is gone; writing to them
/// must fail with EPIPE, not kill the process.
public func ignoreSIGPIPE() {
  _ = ignoreOnce
}

private let ignoreOnce: Void = {
  signal(SIGPIPE, SIG_IGN)
}()

/// The signals a supervisor sends a daemon, handled the same way by every one:
/// SIGTERM, SIGINT and SIGHUP end it cleanly; SIGUSR1 asks for its counters; SIGUSR2 is ignored.
///
/// SIGTERM/SIGINT/SIGHUP are blocked (`blockTermination`, before any other thread starts, so every
/// thread inherits the mask) and taken by one thread with sigwait(2). SIGUSR1 is *not* blocked or
/// sigwaited: the Swift runtime's crash handler uses SIGUSR1/SIGUSR2 to stop threads, and a thread
/// that swallows them makes a crashed daemon hang instead of exiting. Its handler only writes to an
/// eventfd, which a second thread polls.
public enum DaemonSignals {
  static let terminating: [Int32] = [SIGTERM, SIGINT, SIGHUP]

  /// Blocks SIGTERM/SIGINT/SIGHUP in the calling thread (and so in every thread it starts later),
  /// ignores SIGPIPE and SIGUSR2. Call before any thread is started.
  public static func blockTermination() {
    ignoreSIGPIPE()
    signal(SIGUSR2, SIG_IGN)
    var set = sigset_t()
    sigemptyset(&set)
    for s in terminating { sigaddset(&set, s) }
    pthread_sigmask(SIG_BLOCK, &set, nil)
  }

  /// Starts the two monitor threads: `onTerminate` runs once, with the signal's name, when SIGTERM,
  /// SIGINT or SIGHUP arrives; `onStatus` runs on every SIGUSR1.
  public static func start(
    onTerminate: @escaping @Sendable (String) -> Void, onStatus: (@Sendable () -> Void)? = nil
  ) {
    blockTermination()
    try? SystemThread.start(name: "vhost-signals") {
      var set = sigset_t()
      sigemptyset(&set)
      for s in terminating { sigaddset(&set, s) }
      var sig: Int32 = 0
      while sigwait(&set, &sig) != 0 {}
      onTerminate(name(sig))
    }
    guard let onStatus, let status = try? EventFD() else { return }
    guard _cvh_install_status_signal(status.fd.rawValue) == 0 else { return }
    try? SystemThread.start(name: "vhost-status") {
      while true {
        if status.wait(timeoutMilliseconds: -1) {
          status.drain()
          onStatus()
        }
      }
    }
  }

  static func name(_ sig: Int32) -> String {
    switch sig {
    case SIGTERM: "SIGTERM"
    case SIGINT: "SIGINT"
    case SIGHUP: "SIGHUP"
    default: "signal \(sig)"
    }
  }
}
