import CVhostShim

#if canImport(Glibc)
  import Glibc
#endif

/// An open file descriptor this process owns; it is closed exactly once, when the last reference
/// goes away. Received descriptors are wrapped at once, so one that is not kept is never leaked.
public final class OwnedFD: @unchecked Sendable, CustomStringConvertible {
  /// The descriptor number (valid while this object lives).
  public let rawValue: Int32

  /// Takes ownership of `rawValue`.
  public init(taking rawValue: Int32) { self.rawValue = rawValue }

  deinit { _ = Glibc.close(rawValue) }

  /// dup(2) with O_CLOEXEC: a second, independent owner of the same open file.
  public func duplicate() throws(SystemError) -> OwnedFD {
    let fd = try syscall("fcntl(F_DUPFD_CLOEXEC)") { fcntl(rawValue, F_DUPFD_CLOEXEC, 0) }
    return OwnedFD(taking: fd)
  }

  /// Gives up ownership: returns a dup'd raw descriptor the caller must close (for handing to a
  /// child process or C API).
  public func duplicateRaw() throws(SystemError) -> Int32 {
    try syscall("dup") { dup(rawValue) }
  }

  /// fstat(2) size of the file.
  public func fileSize() throws(SystemError) -> Int64 {
    var st = stat()
    _ = try syscall("fstat") { fstat(rawValue, &st) }
    return Int64(st.st_size)
  }

  public var description: String { "fd \(rawValue)" }

  /// Sets O_NONBLOCK (fcntl(2) F_SETFL): a peer's descriptor can then never block a thread.
  public func setNonBlocking() throws(SystemError) {
    _ = try syscall("fcntl(F_SETFL, O_NONBLOCK)") { _cvh_set_nonblocking(rawValue) }
  }

  /// Whether `other` is the same open file description (kcmp(2) KCMP_FILE; two descriptors a peer
  /// sent for the same eventfd). Falls back to comparing st_dev/st_ino when kcmp is unavailable,
  /// which is exact for everything but anonymous inodes.
  public func isSameFile(as other: OwnedFD) -> Bool {
    if rawValue == other.rawValue { return true }
    let r = _cvh_same_file(rawValue, other.rawValue)
    if r >= 0 { return r == 1 }
    var a = stat()
    var b = stat()
    guard fstat(rawValue, &a) == 0, fstat(other.rawValue, &b) == 0 else { return false }
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino
  }

  /// Waits until the descriptor is writable (or in error), up to `timeoutMilliseconds` — poll(2).
  /// Returns false on timeout.
  public func waitWritable(timeoutMilliseconds: Int32) -> Bool {
    while true {
      var p = pollfd(fd: rawValue, events: Int16(POLLOUT), revents: 0)
      let r = poll(&p, 1, timeoutMilliseconds)
      if r > 0 { return true }
      if r == 0 { return false }
      if errno != EINTR { return true }
    }
  }

  /// Waits until the descriptor is readable (or at end of file / in error), up to
  /// `timeoutMilliseconds` (-1: forever) — poll(2). Returns false on timeout.
  public func waitReadable(timeoutMilliseconds: Int32) -> Bool {
    while true {
      let r = _cvh_poll_readable(rawValue, timeoutMilliseconds)
      if r > 0 { return true }
      if r == 0 { return false }
      if errno != EINTR { return true }  // let the read report the error
    }
  }

  /// Number of descriptors this process has open (reads /proc/self/fd); for leak checks.
  public static func openCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var count = 0
    while readdir(dir) != nil { count += 1 }
    return count - 3  // ".", ".." and the directory stream itself
  }
}
