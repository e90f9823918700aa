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
