import Foundation
import Testing
import VhostDevices
import VhostTooling

/// `vhost-user check` as a command: JSON lines, the summary, and the exit status.
@Suite(.serialized)
struct CheckCLITests {
  /// The binary, if it has the `check` subcommand (nil, with a notice, otherwise).
  static func binary(_ dir: TemporaryDirectory) throws -> String? {
    guard let bin = vhostUserBinary else {
      print("SKIP: the vhost-user executable was not built next to the tests")
      return nil
    }
    let p = try ManagedProcess(bin, ["check", "--help"], logPath: dir.file("help.log"))
    guard p.waitExit(milliseconds: 10_000), p.waitStatus == 0, p.output.contains("--socket-path") else {
      print("SKIP: this vhost-user has no `check` subcommand yet")
      return nil
    }
    return bin
  }

  static func exitCode(_ p: ManagedProcess) -> Int32? { p.waitStatus.map { ($0 >> 8) & 0xff } }

  @Test("vhost-user check --json: one JSON object per check, a summary, exit status 0 for our rng back-end")
  func jsonAgainstOurRng() throws {
    let dir = try TemporaryDirectory()
    guard let bin = try Self.binary(dir) else { return }
    let socket = dir.file("rng.sock")
    let backend = try InProcessBackend(device: RngDevice(), socket: socket)
    defer { backend.stop() }
    let p = try ManagedProcess(
      bin, ["check", "--socket-path", socket, "--device", "rng", "--json", "--timeout", "3000"],
      logPath: dir.file("check.log"))
    #expect(p.waitExit(milliseconds: 120_000))
    #expect(Self.exitCode(p) == 0, "\(p.output)")
    let lines = p.output.split(separator: "\n").map(String.init)
    let objects = lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    #expect(objects.count == lines.count, "every line is a JSON object:\n\(p.output)")
    let checks = objects.filter { $0["name"] != nil }
    #expect(checks.count > 30)
    #expect(checks.allSatisfy { ["pass", "skip"].contains($0["outcome"] as? String ?? "") })
    let summary = objects.last?["summary"] as? [String: Any]
    #expect(summary?["fail"] as? Int == 0)
    #expect(summary?["pass"] as? Int == checks.filter { $0["outcome"] as? String == "pass" }.count)
  }

  @Test("vhost-user check exits non-zero on a FAIL (nothing listening) and prints text by default")
  func failureExitStatus() throws {
    let dir = try TemporaryDirectory()
    guard let bin = try Self.binary(dir) else { return }
    let p = try ManagedProcess(
      bin, ["check", "--socket-path", dir.file("nobody.sock"), "--timeout", "200"], logPath: dir.file("check.log"))
    #expect(p.waitExit(milliseconds: 30_000))
    #expect(Self.exitCode(p) == 1, "\(p.output)")
    #expect(p.output.contains("FAIL handshake.connect"))
    #expect(p.output.contains("summary: 0 passed, 1 failed, 0 skipped"))
  }
}
