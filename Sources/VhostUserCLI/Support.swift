import VhostSystem

#if canImport(Glibc)
  import Glibc
#endif

/// Seconds on the monotonic clock (clock_gettime(CLOCK_MONOTONIC)).
func monotonicSeconds() -> Double {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// `value` with `places` decimals (what `String(format: "%.Nf")` prints, without Foundation).
func decimal(_ value: Double, _ places: Int) -> String {
  guard value.isFinite else { return "\(value)" }
  var scale = 1.0
  for _ in 0..<places { scale *= 10 }
  let scaled = (abs(value) * scale).rounded()
  let whole = Int(scaled / scale)
  var fraction = String(Int(scaled) - whole * Int(scale))
  while fraction.count < places { fraction = "0" + fraction }
  return (value < 0 && scaled != 0 ? "-" : "") + "\(whole)" + (places > 0 ? "." + fraction : "")
}

/// Writes `text` to standard output at once (write(2), unbuffered).
func writeStandardOutput(_ text: String) { writeAll(STDOUT_FILENO, text) }

/// Writes `text` to standard error at once (write(2), unbuffered).
func writeStandardError(_ text: String) { writeAll(STDERR_FILENO, text) }

private func writeAll(_ fd: Int32, _ text: String) {
  var bytes = Array(text.utf8)[...]
  while !bytes.isEmpty {
    let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    if n < 0 && errno == EINTR { continue }
    if n <= 0 { return }
    bytes = bytes.dropFirst(n)
  }
}

/// Creates (or truncates) `path` as a sparse file of `size` bytes (open(2) + ftruncate(2)).
func createSparseFile(_ path: String, size: UInt64) throws {
  let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
  guard fd >= 0 else { throw SystemError.current("open(\(path))") }
  defer { close(fd) }
  guard ftruncate(fd, off_t(size)) == 0 else { throw SystemError.current("ftruncate(\(path))") }
}

/// `count` bytes of `path` at `offset` (pread(2)); fewer at the end of the file.
func readFileBytes(_ path: String, offset: UInt64, count: Int) throws -> [UInt8] {
  let fd = open(path, O_RDONLY | O_CLOEXEC)
  guard fd >= 0 else { throw SystemError.current("open(\(path))") }
  defer { close(fd) }
  var out = [UInt8](repeating: 0, count: count)
  var got = 0
  while got < count {
    let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + got, count - got, off_t(offset) + off_t(got)) }
    if n < 0 && errno == EINTR { continue }
    guard n >= 0 else { throw SystemError.current("pread(\(path))") }
    if n == 0 { break }
    got += n
  }
  return Array(out[0..<got])
}
