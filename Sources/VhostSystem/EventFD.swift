import CVhostShim

#if canImport(Glibc)
  import Glibc
#endif

/// An eventfd(2): vhost-user's kick, call and error notifier.
public struct EventFD: Sendable {
  public let fd: OwnedFD

  /// eventfd(0, EFD_CLOEXEC [| EFD_NONBLOCK]).
  public init(nonBlocking: Bool = true) throws(SystemError) {
    let raw = try syscall("eventfd") { _cvh_eventfd(0, nonBlocking ? _cvh_efd_nonblock() : 0) }
    fd = OwnedFD(taking: raw)
  }

  /// Wraps a received descriptor.
  public init(_ fd: OwnedFD) { self.fd = fd }

  /// Wraps a descriptor a peer sent and makes it non-blocking, so that neither a signal nor a
  /// drain can ever block the thread doing it (the peer may send a pipe nobody reads).
  public init(peer fd: OwnedFD) throws(SystemError) {
    try fd.setNonBlocking()
    self.fd = fd
  }

  /// Adds 1 to the counter (write(2) of 8 bytes). EAGAIN is success: the counter (or the pipe a
  /// peer passed off as an eventfd) is already full, so the other side has something to read.
  public func signal() throws(SystemError) {
    var one: UInt64 = 1
    while true {
      let n = write(fd.rawValue, &one, 8)
      if n == 8 { return }
      if n < 0 && errno == EINTR { continue }
      if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return }
      throw SystemError("write(eventfd)", errno: n < 0 ? errno : EIO)
    }
  }

  /// What a non-blocking read found.
  public enum DrainResult: Sendable, Equatable {
    /// The counter's value (now reset).
    case signalled(UInt64)
    /// Nothing was pending.
    case empty
    /// End of file or an error: the descriptor will never signal again (a pipe whose writer is
    /// gone, a socket, a file); waiting on it would spin.
    case failed
  }

  /// Reads and resets the counter, telling an empty counter from a dead descriptor.
  public func drainResult() -> DrainResult {
    var value: UInt64 = 0
    while true {
      let n = read(fd.rawValue, &value, 8)
      if n == 8 { return .signalled(value) }
      if n > 0 { return .signalled(1) }  // a pipe's partial write: still a notification
      if n < 0 && errno == EINTR { continue }
      if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return .empty }
      return .failed
    }
  }

  /// Reads and resets the counter; returns 0 when nothing was pending (non-blocking fds).
  @discardableResult
  public func drain() -> UInt64 {
    var value: UInt64 = 0
    while true {
      let n = read(fd.rawValue, &value, 8)
      if n == 8 { return value }
      if n < 0 && errno == EINTR { continue }
      return 0
    }
  }

  /// Waits until the counter is non-zero or `timeoutMilliseconds` pass; true if signalled.
  public func wait(timeoutMilliseconds: Int32) -> Bool {
    _cvh_poll_readable(fd.rawValue, timeoutMilliseconds) == 1
  }
}
