import CVhostShim

#if canImport(Glibc)
  import Glibc
#endif

/// An epoll(7) instance; registrations carry a caller-chosen 64-bit token.
public final class Epoll: @unchecked Sendable {
  public let fd: OwnedFD

  /// epoll_create1(EPOLL_CLOEXEC).
  public init() throws(SystemError) {
    fd = OwnedFD(taking: try syscall("epoll_create1") { _cvh_epoll_create() })
  }

  /// epoll_ctl(EPOLL_CTL_ADD) for readability.
  public func add(_ target: OwnedFD, token: UInt64) throws(SystemError) {
    _ = try syscall("epoll_ctl(ADD, fd \(target.rawValue))") {
      _cvh_epoll_ctl(fd.rawValue, _cvh_epoll_ctl_add(), target.rawValue, _cvh_epollin(), token)
    }
  }

  /// epoll_ctl(EPOLL_CTL_DEL); errors (already closed) are ignored.
  public func remove(_ target: OwnedFD) {
    _ = _cvh_epoll_ctl(fd.rawValue, _cvh_epoll_ctl_del(), target.rawValue, 0, 0)
  }

  /// epoll_wait: tokens of ready descriptors (empty on timeout or EINTR).
  public func wait(timeoutMilliseconds: Int32, max: Int = 64) -> [UInt64] {
    var tokens = [UInt64](repeating: 0, count: max)
    var events = [UInt32](repeating: 0, count: max)
    let n = _cvh_epoll_wait(fd.rawValue, &tokens, &events, Int32(max), timeoutMilliseconds)
    guard n > 0 else { return [] }
    return Array(tokens[0..<Int(n)])
  }
}
