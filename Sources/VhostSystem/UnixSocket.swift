import CVhostShim

#if canImport(Glibc)
  import Glibc
#endif

/// A connected AF_UNIX stream socket that can pass descriptors (SCM_RIGHTS).
public struct UnixSocket: Sendable {
  public let fd: OwnedFD

  public init(_ fd: OwnedFD) { self.fd = fd }

  /// Connects to the socket at `path`.
  public static func connect(to path: String) throws(SystemError) -> UnixSocket {
    let raw = try syscall("socket(AF_UNIX)") {
      socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }
    let fd = OwnedFD(taking: raw)
    var addr = try makeAddress(path)
    _ = try syscall("connect(\(path))") {
      withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          Glibc.connect(raw, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
      }
    }
    return UnixSocket(fd)
  }

  /// Retries `connect` until the socket exists and accepts, or the timeout passes.
  public static func connect(to path: String, retryingFor timeoutMilliseconds: Int) throws(SystemError) -> UnixSocket {
    var waited = 0
    while true {
      do {
        return try connect(to: path)
      } catch {
        guard waited < timeoutMilliseconds, error.errno == ENOENT || error.errno == ECONNREFUSED else { throw error }
        usleep(20_000)
        waited += 20
      }
    }
  }

  /// A connected pair (the back-end channel of SET_BACKEND_REQ_FD).
  public static func pair() throws(SystemError) -> (UnixSocket, UnixSocket) {
    var fds: [Int32] = [-1, -1]
    _ = try syscall("socketpair(AF_UNIX)") {
      socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds)
    }
    return (UnixSocket(OwnedFD(taking: fds[0])), UnixSocket(OwnedFD(taking: fds[1])))
  }

  static func makeAddress(_ path: String) throws(SystemError) -> sockaddr_un {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
      throw SystemError("socket path too long: \(path)", errno: ENAMETOOLONG)
    }
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
      for (i, b) in bytes.enumerated() { raw[i] = b }
    }
    return addr
  }

  /// sendmsg(2) with MSG_DONTWAIT: `bytes` with `fds` attached to the first byte; retries partial
  /// sends (without the fds again). Never blocks in the kernel, even on a blocking socket: when the
  /// buffer is full it waits in poll(2), at most `timeoutMilliseconds` each time, so a peer that
  /// stops reading costs a timeout, not a stuck thread.
  public func send(_ bytes: [UInt8], fds: [Int32] = [], timeoutMilliseconds: Int32) throws(TransportError) {
    var sent = 0
    var first = true
    while sent < bytes.count || first {
      let attach = first ? fds : []
      let n = bytes.withUnsafeBytes { buf in
        attach.withUnsafeBufferPointer { fdp in
          _cvh_sendmsg_fds(fd.rawValue, buf.baseAddress! + sent, buf.count - sent, fdp.baseAddress, Int32(attach.count))
        }
      }
      if n < 0 {
        let e = errno
        if e == EINTR { continue }
        if e == EAGAIN || e == EWOULDBLOCK {
          try waitWritable(timeoutMilliseconds)
          continue
        }
        if e == EPIPE || e == ECONNRESET { throw .disconnected }
        throw .system(SystemError("sendmsg", errno: e))
      }
      first = false
      sent += n
      if bytes.isEmpty { break }
    }
  }

  private func waitWritable(_ timeout: Int32) throws(TransportError) {
    var p = pollfd(fd: fd.rawValue, events: Int16(POLLOUT), revents: 0)
    let r = poll(&p, 1, timeout)
    if r == 0 { throw .timeout("sendmsg") }
    if r < 0 && errno != EINTR { throw .system(.current("poll")) }
  }

  /// Reads exactly `count` bytes (recvmsg with MSG_CMSG_CLOEXEC), waiting at most until `deadline`
  /// for each chunk. Descriptors arriving with any chunk are returned, owned.
  public func receive(count: Int, deadline: Deadline, what: String) throws(TransportError) -> ([UInt8], [OwnedFD]) {
    var buffer = [UInt8](repeating: 0, count: count)
    var fds: [OwnedFD] = []
    var got = 0
    let maxFDs = Int(_cvh_max_fds())
    var raw = [Int32](repeating: -1, count: maxFDs)
    while got < count {
      let wait = deadline.remainingMilliseconds
      let ready = _cvh_poll_readable(fd.rawValue, wait)
      if ready == 0 { throw .timeout(what) }
      if ready < 0 {
        if errno == EINTR { continue }
        throw .system(.current("poll"))
      }
      var nfds: Int32 = 0
      var ctrunc: Int32 = 0
      let n = buffer.withUnsafeMutableBytes { buf in
        raw.withUnsafeMutableBufferPointer { fdp in
          _cvh_recvmsg_fds(
            fd.rawValue, buf.baseAddress! + got, count - got, fdp.baseAddress, Int32(maxFDs), &nfds, &ctrunc)
        }
      }
      if n < 0 {
        let e = errno
        if e == EINTR || e == EAGAIN { continue }
        if e == ECONNRESET { throw .disconnected }
        throw .system(SystemError("recvmsg", errno: e))
      }
      for i in 0..<Int(nfds) { fds.append(OwnedFD(taking: raw[i])) }
      if ctrunc != 0 { throw .controlTruncated }
      if n == 0 { throw got == 0 && what.hasSuffix("header") ? .disconnected : .disconnectedMidMessage(what) }
      got += n
    }
    return (buffer, fds)
  }

  /// setsockopt(SO_PEERCRED)-free shutdown of both directions; wakes a blocked peer reader.
  public func shutdown() { _ = Glibc.shutdown(fd.rawValue, Int32(SHUT_RDWR)) }
}

/// A listening AF_UNIX socket.
public struct UnixListener: Sendable {
  public let fd: OwnedFD
  public let path: String?

  /// Binds and listens at `path`. Something already there is only replaced when it is a socket
  /// nobody listens on (connect(2) refused: a stale socket of an earlier run); a live socket, a
  /// regular file, a directory or anything else is refused with an error naming it — never deleted.
  public init(path: String, backlog: Int32 = 16) throws(SystemError) {
    try Self.clearStaleSocket(at: path)
    let raw = try syscall("socket(AF_UNIX)") {
      socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }
    let fd = OwnedFD(taking: raw)
    var addr = try UnixSocket.makeAddress(path)
    _ = try syscall("bind(\(path))") {
      withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          bind(raw, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
      }
    }
    _ = try syscall("listen(\(path))") { listen(raw, backlog) }
    self.fd = fd
    self.path = path
  }

  /// Removes `path` if it is a stale socket; throws if something else is there (lstat(2), connect(2)).
  static func clearStaleSocket(at path: String) throws(SystemError) {
    var st = stat()
    guard lstat(path, &st) == 0 else {
      if errno == ENOENT { return }
      throw .current("lstat(\(path))")
    }
    guard st.st_mode & S_IFMT == S_IFSOCK else {
      let kind =
        switch st.st_mode & S_IFMT {
        case S_IFREG: "a regular file"
        case S_IFDIR: "a directory"
        case S_IFLNK: "a symbolic link"
        default: "not a socket"
        }
      throw SystemError("refusing to replace \(path): it is \(kind), not a socket", errno: EEXIST)
    }
    if let live = try? UnixSocket.connect(to: path) {
      _ = live
      throw SystemError("refusing to replace \(path): another process is listening on it", errno: EADDRINUSE)
    }
    guard unlink(path) == 0 || errno == ENOENT else { throw .current("unlink(\(path))") }
  }

  /// Whether `fd` is a listening AF_UNIX stream socket (getsockopt SO_ACCEPTCONN, SO_DOMAIN).
  public static func isListeningSocket(_ fd: Int32) -> Bool {
    var value: Int32 = 0
    var length = socklen_t(MemoryLayout<Int32>.size)
    guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &value, &length) == 0, value == 1 else { return false }
    length = socklen_t(MemoryLayout<Int32>.size)
    guard getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &value, &length) == 0 else { return false }
    return value == AF_UNIX
  }

  /// Adopts an inherited listening socket (`--fd N`).
  public init(inheriting fd: OwnedFD) {
    self.fd = fd
    path = nil
  }

  /// accept4(2) with SOCK_CLOEXEC; waits at most `timeoutMilliseconds` (-1 forever). Nil on timeout.
  public func accept(timeoutMilliseconds: Int32) throws(SystemError) -> UnixSocket? {
    while true {
      let r = _cvh_poll_readable(fd.rawValue, timeoutMilliseconds)
      if r == 0 { return nil }
      if r < 0 {
        if errno == EINTR { continue }
        throw .current("poll(listen)")
      }
      let c = _cvh_accept_cloexec(fd.rawValue)
      if c < 0 {
        if errno == EINTR || errno == EAGAIN || errno == ECONNABORTED { continue }
        throw .current("accept4")
      }
      return UnixSocket(OwnedFD(taking: c))
    }
  }
}

/// A point in time on the monotonic clock, for timeouts that span several syscalls.
public struct Deadline: Sendable {
  let nanoseconds: UInt64?

  public static let never = Deadline(nanoseconds: nil)

  public static func after(milliseconds: Int) -> Deadline {
    Deadline(nanoseconds: Deadline.now() + UInt64(max(milliseconds, 0)) * 1_000_000)
  }

  /// Nanoseconds on CLOCK_MONOTONIC.
  public static func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
  }

  /// Milliseconds left (-1 = forever, 0 = expired).
  public var remainingMilliseconds: Int32 {
    guard let nanoseconds else { return -1 }
    let now = Deadline.now()
    guard nanoseconds > now else { return 0 }
    return Int32(min((nanoseconds - now + 999_999) / 1_000_000, UInt64(Int32.max)))
  }
}

/// Why sending or receiving a message failed.
public enum TransportError: Error, Sendable, CustomStringConvertible {
  case timeout(String)
  case disconnected
  case disconnectedMidMessage(String)
  case controlTruncated
  case system(SystemError)
  case protocolViolation(String)

  public var description: String {
    switch self {
    case .timeout(let what): "timed out waiting for \(what)"
    case .disconnected: "peer closed the connection"
    case .disconnectedMidMessage(let what): "peer closed the connection in the middle of \(what)"
    case .controlTruncated: "ancillary data truncated (MSG_CTRUNC): too many descriptors attached"
    case .system(let e): e.description
    case .protocolViolation(let s): s
    }
  }
}
