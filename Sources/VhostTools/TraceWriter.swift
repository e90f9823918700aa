import VhostSystem

#if canImport(Glibc)
  import Glibc
#endif

/// Writes trace events as lines (text or JSON) to standard output or a file, unbuffered: each line
/// is visible as soon as its message was relayed (`tail -f` works).
public final class TraceWriter: @unchecked Sendable {
  public let json: Bool
  private let fd: Int32
  private let owned: OwnedFD?

  /// Writes to `path` (created or truncated), or to standard output when nil.
  public init(path: String? = nil, json: Bool = false) throws(SystemError) {
    self.json = json
    if let path {
      let raw = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
      guard raw >= 0 else { throw .current("open(\(path))") }
      owned = OwnedFD(taking: raw)
      fd = raw
    } else {
      owned = nil
      fd = STDOUT_FILENO
    }
  }

  /// Writes one event as one line. Callers serialise (the tracer reports under a lock).
  public func write(_ event: TraceEvent) {
    let bytes = Array(((json ? event.json : event.text) + "\n").utf8)
    var done = 0
    while done < bytes.count {
      let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
      if n < 0 && errno == EINTR { continue }
      if n <= 0 { return }
      done += n
    }
    withExtendedLifetime(owned) {}
  }
}
