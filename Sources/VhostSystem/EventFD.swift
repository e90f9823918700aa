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

  /// Adds 1 to the counter (write(2) of 8 bytes).
  public func signal() throws(SystemError) {
    var one: UInt64 = 1
    let n = try syscall("write(eventfd)") { write(fd.rawValue, &one, 8) }
    guard n == 8 else { throw SystemError("write(eventfd)", errno: EIO) }
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
