import VhostSystem

#if canImport(Glibc)
  import Glibc
#endif

/// An exclusive lock on `SOCKET.lock`, holding our pid: a second instance on the same socket is
/// refused instead of taking it over (virtiofsd does the same with its pid file).
final class InstanceLock {
  let path: String
  private let fd: Int32

  init(socketPath: String) throws {
    path = socketPath + ".lock"
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw CLIError("cannot open \(path): \(SystemError.current("open").description)") }
    guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
      var buf = [UInt8](repeating: 0, count: 32)
      let n = read(fd, &buf, buf.count)
      let pid = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self).trimmingWhitespace : "?"
      close(fd)
      throw CLIError("\(socketPath) is served by another instance (pid \(pid), lock \(path))")
    }
    _ = ftruncate(fd, 0)
    let text = Array("\(getpid())\n".utf8)
    _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
  }

  /// Removes the lock file (ours) and lets go of the lock.
  func release() {
    unlink(path)
    close(fd)
  }
}

/// An flock(2) on the served image: exclusive for a read-write export, shared for read-only ones
/// (which may then share the image with each other, never with a writer).
final class ImageLock {
  private let fd: Int32

  init(path: String, readOnly: Bool) throws {
    fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw CLIError("cannot open \(path): \(SystemError.current("open").description)") }
    guard flock(fd, (readOnly ? LOCK_SH : LOCK_EX) | LOCK_NB) == 0 else {
      close(fd)
      throw CLIError(
        "\(path) is already exported by another process"
          + (readOnly ? " read-write" : "") + "; two writers must not share one image")
    }
  }

  deinit { close(fd) }
}

/// Whether two paths name the same file (st_dev and st_ino).
func sameFile(_ a: String, _ b: String) -> Bool {
  var sa = stat()
  var sb = stat()
  guard stat(a, &sa) == 0, stat(b, &sb) == 0 else { return false }
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino
}

extension String {
  var trimmingWhitespace: String {
    var s = Substring(self)
    while let c = s.first, c.isWhitespace { s.removeFirst() }
    while let c = s.last, c.isWhitespace { s.removeLast() }
    return String(s)
  }
}

/// Test builds only: with VHOST_USER_DEBUG_TRAP set, a thread of the serving daemon traps, so a
/// test can check that a crash ends the process (no signal thread may keep it alive).
func debugTrapIfAsked() {
  #if DEBUG
    guard getenv("VHOST_USER_DEBUG_TRAP") != nil else { return }
    try? SystemThread.start(name: "vhost-debug-trap") {
      usleep(100_000)
      preconditionFailure("VHOST_USER_DEBUG_TRAP: a thread traps on purpose")
    }
  #endif
}
