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

  /// Number of descriptors this process has open (reads /proc/self/fd); for leak checks.
  public static func openCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var count = 0
    while readdir(dir) != nil { count += 1 }
    return count - 3  // ".", ".." and the directory stream itself
  }
}
