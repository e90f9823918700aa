import Foundation
import Testing
import VhostDevices
import VhostFrontend
import VhostSystem
import VhostTooling

#if canImport(Glibc)
  import Glibc
#endif

/// `vhost-user trace` as a process: JSON lines to a file, text to standard output, SIGTERM.
@Suite(.serialized)
struct TraceCLITests {
  /// Starts `vhost-user trace` with `arguments`; nil (with an issue recorded) when it cannot run.
  static func start(_ arguments: [String], dir: TemporaryDirectory, listen: String) throws -> ManagedProcess? {
    guard let bin = vhostUserBinary else {
      Issue.record("the vhost-user executable was not built next to the tests")
      return nil
    }
    let p = try ManagedProcess(bin, ["trace"] + arguments, logPath: dir.file("trace.out"))
    guard p.waitForFile(listen, milliseconds: 10_000) else {
      Issue.record("vhost-user trace did not listen (is Trace.self among Main.swift's subcommands?): \(p.output)")
      return nil
    }
    return p
  }

  @Test("--json --log FILE: a negotiation through the tracer process lands in the file as JSON lines")
  func jsonLog() throws {
    let dir = try TemporaryDirectory()
    let backendSocket = dir.file("rng.sock")
    let backend = try InProcessBackend(device: RngDevice(), socket: backendSocket)
    defer { backend.stop() }
    let listen = dir.file("trace.sock")
    let log = dir.file("trace.jsonl")
    guard
      let p = try Self.start(
        ["--listen", listen, "--connect", backendSocket, "--json", "--log", log], dir: dir, listen: listen)
    else { return }
    defer { p.stop() }
    let connection = try VhostUserConnection.connect(path: listen, retryMilliseconds: 2000)
    let state = try connection.device().negotiate()
    #expect(state.protocolFeaturesEnabled)
    connection.close()
    kill(p.pid, SIGTERM)
    #expect(p.waitExit(milliseconds: 3000), "still running 3 s after SIGTERM")
    #expect(p.waitStatus == 0, "exit status \(String(describing: p.waitStatus)): \(p.output)")
    #expect(!FileManager.default.fileExists(atPath: listen))
    #expect(p.output.isEmpty, "with --log nothing goes to standard output: \(p.output)")
    let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
    let objects = try lines.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    #expect(objects.allSatisfy { $0 != nil }, "\(lines)")
    let requests = objects.compactMap { $0?["request"] as? String }
    for r in ["GET_FEATURES", "GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES", "SET_BACKEND_REQ_FD"] {
      #expect(requests.contains(r), "no \(r) in \(lines)")
    }
    let offer = objects.first { $0?["request"] as? String == "GET_FEATURES" && $0?["dir"] as? String == "B→F" }
    let names = ((offer??["payload"] as? [String: Any])?["features"] as? [String: Any])?["names"] as? [String]
    #expect(names?.contains("PROTOCOL_FEATURES") == true, "\(String(describing: offer))")
    #expect(objects.contains { $0?["event"] as? String == "closed" })
  }

  @Test("text to standard output, one line per message")
  func textOutput() throws {
    let dir = try TemporaryDirectory()
    let backendSocket = dir.file("rng.sock")
    let backend = try InProcessBackend(device: RngDevice(), socket: backendSocket)
    defer { backend.stop() }
    let listen = dir.file("trace.sock")
    guard let p = try Self.start(["--listen", listen, "--connect", backendSocket], dir: dir, listen: listen) else {
      return
    }
    defer { p.stop() }
    let connection = try VhostUserConnection.connect(path: listen, retryMilliseconds: 2000)
    _ = try connection.device().negotiate()
    connection.close()
    #expect(p.waitForOutput("closed: front-end closed the connection", milliseconds: 5000), "\(p.output)")
    let out = p.output
    #expect(out.contains(" F→B    GET_FEATURES fds=0"), "\(out)")
    #expect(out.contains(" B→F    GET_FEATURES [REPLY] features=0x"), "\(out)")
    #expect(out.contains("PROTOCOL_FEATURES|VERSION_1"), "\(out)")
  }

  @Test("invalid options are refused")
  func invalid() throws {
    guard let bin = vhostUserBinary else { return }
    let dir = try TemporaryDirectory()
    let p = try ManagedProcess(
      bin, ["trace", "--listen", dir.file("t.sock"), "--connect", dir.file("b.sock"), "--device", "gpu"],
      logPath: dir.file("out"))
    #expect(p.waitExit(milliseconds: 10_000))
    #expect(p.waitStatus != 0)
    #expect(p.output.contains("unknown device type gpu"), "(is Trace.self among Main.swift's subcommands?) \(p.output)")
  }
}
