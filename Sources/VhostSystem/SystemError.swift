#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A failed system call: what was attempted and the errno it returned.
public struct SystemError: Error, Hashable, Sendable, CustomStringConvertible {
  public var operation: String
  public var errno: Int32

  public init(_ operation: String, errno: Int32) {
    self.operation = operation
    self.errno = errno
  }

  /// Captures the calling thread's current errno.
  public static func current(_ operation: String) -> SystemError {
    SystemError(operation, errno: Glibc.errno)
  }

  public var description: String {
    "\(operation) failed: \(String(cString: strerror(errno))) (errno \(errno))"
  }
}

/// Runs a system call, retrying on EINTR; a negative result becomes a `SystemError` naming `operation`.
@inline(__always)
func syscall<T: SignedInteger>(_ operation: @autoclosure () -> String, _ body: () -> T) throws(SystemError) -> T {
  while true {
    let result = body()
    if result >= 0 { return result }
    let code = Glibc.errno
    if code == EINTR { continue }
    throw SystemError(operation(), errno: code)
  }
}
