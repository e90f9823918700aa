import Foundation
import Testing
import VhostFrontend
import VhostSystem
import VhostTooling

#if canImport(Glibc)
  import Glibc
#endif

/// What an operator sees: refusals that name the problem, clean exits on every supervisor signal,
/// nothing left behind, and a crash that ends the process.
@Suite(.serialized)
struct OperatorCLITests {
  /// The exit code of a raw wait status, or nil when the process was killed by a signal.
  static func exitCode(_ status: Int32?) -> Int32? {
    guard let status, status & 0x7f == 0 else { return nil }
    return (status >> 8) & 0xff
  }

  /// Runs `vhost-user ARGS` to completion (10 s at most) in `dir`; returns (exit code, output).
  static func run(_ args: [String], in dir: TemporaryDirectory, log: String = "log") throws -> (Int32?, String) {
    guard let bin = CLITests.binary() else { return (nil, "") }
    let p = try ManagedProcess(bin, args, logPath: dir.file(log))
    #expect(p.waitExit(milliseconds: 10_000), "vhost-user \(args) did not exit")
    return (exitCode(p.waitStatus), p.output)
  }

  static func entries(_ dir: TemporaryDirectory) -> Set<String> {
    Set((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? [])
  }

  @Test("swapped arguments (--socket-path is the image): refused, exit 1, the image byte-identical")
  func swappedArguments() throws {
    let dir = try TemporaryDirectory()
    let image = dir.file("disk.img")
    try makeImage(image, size: 1 << 20)
    let before = try readFile(image, offset: 0, count: 1 << 20)
    let (code, output) = try Self.run(["blk", "--socket-path", image, "--blk-file", image], in: dir)
    #expect(code == 1)
    #expect(output.contains("is the image given as --blk-file"), "\(output)")
    #expect(try readFile(image, offset: 0, count: 1 << 20) == before)
    #expect(Self.entries(dir) == ["disk.img", "log"])
  }

  @Test("a regular file or a directory at --socket-path is refused, never replaced", arguments: ["file", "dir"])
  func nonSocketRefused(kind: String) throws {
    let dir = try TemporaryDirectory()
    let path = dir.file("taken")
    if kind == "file" {
      try Data("precious".utf8).write(to: URL(fileURLWithPath: path))
    } else {
      try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    }
    let (code, output) = try Self.run(["rng", "--socket-path", path], in: dir)
    #expect(code == 1)
    #expect(output.contains("refusing to replace \(path)"), "\(output)")
    if kind == "file" { #expect((try? String(contentsOfFile: path, encoding: .utf8)) == "precious") }
    #expect(Self.entries(dir) == ["taken", "log"])
  }

  @Test("a second instance on the same socket is refused naming the first's pid; the first keeps serving")
  func secondInstance() throws {
    guard let bin = CLITests.binary() else { return }
    let dir = try TemporaryDirectory()
    let socket = dir.file("rng.sock")
    let first = try ManagedProcess(bin, ["rng", "--socket-path", socket], logPath: dir.file("first"))
    defer { first.stop() }
    #expect(first.waitForFile(socket, milliseconds: 10_000))
    let (code, output) = try Self.run(["rng", "--socket-path", socket], in: dir, log: "second")
    #expect(code == 1)
    #expect(output.contains("served by another instance (pid \(first.pid)"), "\(output)")
    let connection = try VhostUserConnection.connect(path: socket, retryMilliseconds: 2000)
    _ = try connection.device().negotiate()
    connection.close()
    first.stop()
    #expect(Self.exitCode(first.waitStatus) == 0)
    #expect(Self.entries(dir) == ["first", "second"], "left behind: \(Self.entries(dir))")
  }

  @Test("two read-write exports of one image are refused; read-only ones share it")
  func imageLock() throws {
    guard let bin = CLITests.binary() else { return }
    let dir = try TemporaryDirectory()
    let image = dir.file("disk.img")
    try makeImage(image, size: 1 << 20)
    let a = try ManagedProcess(bin, ["blk", "-s", dir.file("a.sock"), "--blk-file", image], logPath: dir.file("a"))
    defer { a.stop() }
    #expect(a.waitForFile(dir.file("a.sock"), milliseconds: 10_000))
    let (code, output) = try Self.run(["blk", "-s", dir.file("b.sock"), "--blk-file", image], in: dir, log: "b")
    #expect(code == 1)
    #expect(output.contains("already exported by another process"), "\(output)")
    a.stop()
    let r1 = try ManagedProcess(
      bin, ["blk", "-s", dir.file("r1.sock"), "--blk-file", image, "--read-only"], logPath: dir.file("r1"))
    defer { r1.stop() }
    let r2 = try ManagedProcess(
      bin, ["blk", "-s", dir.file("r2.sock"), "--blk-file", image, "--read-only"], logPath: dir.file("r2"))
    defer { r2.stop() }
    #expect(r1.waitForFile(dir.file("r1.sock"), milliseconds: 10_000))
    #expect(r2.waitForFile(dir.file("r2.sock"), milliseconds: 10_000))
  }

  @Test(
    "SIGTERM, SIGINT and SIGHUP end blk with --direct / --io-threads cleanly (exit 0, nothing left)",
    arguments: [SIGTERM, SIGINT, SIGHUP])
  func supervisorSignals(sig: Int32) throws {
    guard let bin = CLITests.binary() else { return }
    let dir = try TemporaryDirectory()
    let image = dir.file("disk.img")
    try makeImage(image, size: 1 << 20)
    for extra in [["--direct"], ["--io-threads", "4"]] {
      let socket = dir.file("blk.sock")
      let p = try ManagedProcess(bin, ["blk", "-s", socket, "--blk-file", image] + extra, logPath: dir.file("log"))
      #expect(p.waitForFile(socket, milliseconds: 10_000))
      kill(p.pid, sig)
      #expect(p.waitExit(milliseconds: 3000), "\(extra) still running after signal \(sig)")
      #expect(Self.exitCode(p.waitStatus) == 0, "\(extra): status \(String(describing: p.waitStatus)) \(p.output)")
      #expect(Self.entries(dir) == ["disk.img", "log"], "\(extra) left behind: \(Self.entries(dir))")
    }
  }

  @Test("SIGUSR1 prints counters (blk, rng, net) and the daemon keeps serving; SIGUSR2 is ignored")
  func statusSignals() throws {
    guard let bin = CLITests.binary() else { return }
    let dir = try TemporaryDirectory()
    let image = dir.file("disk.img")
    try makeImage(image, size: 1 << 20)
    let cases: [(args: [String], marker: String)] = [
      (["blk", "-s", dir.file("s.sock"), "--blk-file", image], "blk: 0 reads"),
      (["rng", "-s", dir.file("s.sock")], "rng: socket 0: 0 bytes"),
      (["net", "-s", dir.file("s.sock")], "port 0 (socket"),
    ]
    for c in cases {
      let p = try ManagedProcess(bin, c.args, logPath: dir.file("log-\(c.args[0])"))
      defer { p.stop() }
      #expect(p.waitForFile(dir.file("s.sock"), milliseconds: 10_000))
      kill(p.pid, SIGUSR2)
      kill(p.pid, SIGUSR1)
      #expect(p.waitForOutput(c.marker, milliseconds: 5000), "\(c.args[0]): \(p.output)")
      #expect(p.isRunning, "\(c.args[0]) died of SIGUSR1/SIGUSR2")
      let connection = try VhostUserConnection.connect(path: dir.file("s.sock"), retryMilliseconds: 2000)
      _ = try connection.device().negotiate()
      connection.close()
      p.stop()
      #expect(Self.exitCode(p.waitStatus) == 0)
    }
  }

  @Test(
    "a daemon whose thread traps exits non-zero within a second (no signal thread keeps it)",
    arguments: ["blk", "net", "rng"])
  func crashExits(device: String) throws {
    guard let bin = CLITests.binary() else { return }
    let dir = try TemporaryDirectory()
    let image = dir.file("disk.img")
    try makeImage(image, size: 1 << 20)
    var args = [device, "-s", dir.file("s.sock")]
    if device == "blk" { args += ["--blk-file", image, "--direct"] }
    setenv("VHOST_USER_DEBUG_TRAP", "1", 1)
    let p = try ManagedProcess(bin, args, logPath: dir.file("log"))
    unsetenv("VHOST_USER_DEBUG_TRAP")
    defer { p.stop() }
    #expect(p.waitForFile(dir.file("s.sock"), milliseconds: 10_000))
    let start = Date()
    // The trap comes 0.1 s after serving starts; the crash handler's report and exit follow.
    #expect(p.waitExit(milliseconds: 5000), "still running 5 s after its thread trapped: \(p.output)")
    #expect(Date().timeIntervalSince(start) < 1.5)
    #expect(p.waitStatus != 0)
    // Restarting over what the crash left (a stale socket and lock file) works.
    let again = try ManagedProcess(bin, args, logPath: dir.file("again"))
    defer { again.stop() }
    #expect(again.waitForOutput("serving", milliseconds: 10_000), "restart after a crash: \(again.output)")
  }

  @Test("--fd that is not a listening socket, a directory or an empty image: exit 1 with a message")
  func badInputs() throws {
    let dir = try TemporaryDirectory()
    let empty = dir.file("empty.img")
    _ = FileManager.default.createFile(atPath: empty, contents: nil)
    let sub = dir.file("sub")
    try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: false)
    let cases: [(args: [String], message: String)] = [
      (["rng", "--fd", "0"], "is not a listening Unix stream socket"),
      (["blk", "-s", dir.file("a.sock"), "--blk-file", empty], "is empty"),
      (["blk", "-s", dir.file("a.sock"), "--blk-file", sub, "--read-only"], "not a regular file or a block device"),
      (["blk", "-s", dir.file("a.sock"), "--blk-file", empty, "--queue-size", "0"], "--queue-size"),
      (["net", "-s", dir.file("a.sock"), "--mac", "ff:ff:ff:ff:ff:ff"], "multicast, broadcast or zero"),
      // The second socket fails after the first was bound: the first is removed again.
      (["net", "-s", dir.file("a.sock"), "-s", sub], "refusing to replace \(sub)"),
    ]
    for c in cases {
      let (code, output) = try Self.run(c.args, in: dir)
      #expect(code == 1 || code == 64, "\(c.args): exit \(String(describing: code))")
      #expect(output.contains(c.message), "\(c.args): \(output)")
    }
    #expect(Self.entries(dir) == ["empty.img", "sub", "log"], "left behind: \(Self.entries(dir))")
    // --print-capabilities ignores the other options.
    let (code, output) = try Self.run(["net", "--print-capabilities", "--mac", "ff:ff:ff:ff:ff:ff"], in: dir)
    #expect(code == 0)
    #expect(output.contains("\"type\": \"net\""))
  }
}
