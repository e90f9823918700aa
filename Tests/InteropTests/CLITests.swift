import Foundation
import Testing
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTooling

#if canImport(Glibc)
  import Glibc
#endif

/// The `vhost-user` back-ends as QEMU's "backend program conventions" expect them.
@Suite(.serialized)
struct CLITests {
  static func binary() -> String? {
    guard let b = vhostUserBinary else {
      Issue.record("the vhost-user executable was not built next to the tests")
      return nil
    }
    return b
  }

  @Test("--print-capabilities prints the conventions' JSON and exits 0", arguments: ["blk", "net", "rng"])
  func capabilities(command: String) throws {
    guard let bin = Self.binary() else { return }
    let dir = try TemporaryDirectory()
    let p = try ManagedProcess(bin, [command, "--print-capabilities"], logPath: dir.file("caps.json"))
    #expect(p.waitExit(milliseconds: 10_000))
    #expect(p.waitStatus == 0)
    let json = try JSONSerialization.jsonObject(with: Data(p.output.utf8)) as? [String: Any]
    let expected = ["blk": "block", "net": "net", "rng": "rng"][command]!
    #expect(json?["type"] as? String == expected)
    if command == "blk" { #expect((json?["features"] as? [String]) == ["read-only", "blk-file"]) }
  }

  @Test("SIGTERM ends a back-end quickly and cleanly, removing its socket")
  func sigterm() throws {
    guard let bin = Self.binary() else { return }
    let dir = try TemporaryDirectory()
    let socket = dir.file("rng.sock")
    let p = try ManagedProcess(bin, ["rng", "--socket-path", socket], logPath: dir.file("log"))
    #expect(p.waitForFile(socket, milliseconds: 10_000))
    // A connected front-end must not keep it alive.
    let connection = try VhostUserConnection.connect(path: socket, retryMilliseconds: 2000)
    _ = try connection.device().negotiate()
    let start = Date()
    kill(p.pid, SIGTERM)
    #expect(p.waitExit(milliseconds: 3000), "still running 3 s after SIGTERM")
    #expect(Date().timeIntervalSince(start) < 2)
    #expect(p.waitStatus == 0, "exit status \(String(describing: p.waitStatus)): \(p.output)")
    #expect(!FileManager.default.fileExists(atPath: socket))
    connection.close()
  }

  @Test("one daemon serves several sockets (repeated --socket-path), each its own device")
  func severalSockets() throws {
    guard let bin = Self.binary() else { return }
    let dir = try TemporaryDirectory()
    let sockets = [dir.file("a.sock"), dir.file("b.sock"), dir.file("c.sock")]
    let p = try ManagedProcess(bin, ["rng"] + sockets.flatMap { ["--socket-path", $0] }, logPath: dir.file("log"))
    for s in sockets { #expect(p.waitForFile(s, milliseconds: 10_000)) }
    // Two front-ends at the same time on different sockets.
    let a = try VhostUserConnection.connect(path: sockets[0], retryMilliseconds: 2000)
    let b = try VhostUserConnection.connect(path: sockets[2], retryMilliseconds: 2000)
    #expect(try a.device().negotiate().maxQueues == 1)
    #expect(try b.device().negotiate().maxQueues == 1)
    a.close()
    b.close()
    kill(p.pid, SIGTERM)
    #expect(p.waitExit(milliseconds: 3000))
    #expect(p.waitStatus == 0)
    for s in sockets { #expect(!FileManager.default.fileExists(atPath: s)) }
  }

  @Test("--fd N serves an inherited listening socket")
  func inheritedSocket() throws {
    guard let bin = Self.binary() else { return }
    let dir = try TemporaryDirectory()
    let socket = dir.file("inherited.sock")
    let listener = try UnixListener(path: socket)
    // An inheritable (no CLOEXEC) copy for the child.
    let inheritable = dup(listener.fd.rawValue)
    #expect(inheritable >= 0)
    defer { close(inheritable) }
    let image = dir.file("disk.img")
    try makeImage(image, size: 8 << 20)
    let p = try ManagedProcess(bin, ["blk", "--fd", "\(inheritable)", "--blk-file", image], logPath: dir.file("log"))
    defer { p.stop() }
    let report = try ProbeReport.collect(path: socket)
    #expect(report.inferredDevice == .blk)
    let capacity: UInt64 = report.config.flatMap { (try? BlkConfig(bytes: $0))?.capacity } ?? 0
    #expect(capacity == UInt64(8 << 20) / 512)
  }

  @Test("options are validated: --socket-path and --fd are exclusive, --blk-file is required")
  func validation() throws {
    guard let bin = Self.binary() else { return }
    let dir = try TemporaryDirectory()
    for args in [
      ["blk", "--socket-path", dir.file("a"), "--fd", "3", "--blk-file", "/dev/null"], ["blk"],
      ["blk", "--socket-path", dir.file("b")],
      ["blk", "--socket-path", dir.file("c"), "--socket-path", dir.file("d"), "--blk-file", "/dev/null"],
    ] {
      let p = try ManagedProcess(bin, args, logPath: dir.file("v.log"))
      #expect(p.waitExit(milliseconds: 10_000))
      #expect(p.waitStatus != 0, "\(args) was accepted")
    }
  }
}
