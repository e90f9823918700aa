import ArgumentParser
import VhostConformance
import VhostProtocol
import VhostSystem

struct Check: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Check a vhost-user back-end against the specification.",
    discussion: """
      Connects to the back-end as a front-end and runs a conformance suite: handshake, REPLY_ACK, ring \
      lifecycle, memory table updates, config space, reconnection and (last, each on a fresh connection) \
      malformed messages, after each of which the back-end must still serve a new connection. Each check \
      prints PASS, FAIL or SKIP (feature not offered) with the rule it tests. Exit status 1 if any check fails.
      """)

  @Option(help: "The back-end's socket.") var socketPath: String
  @Flag(help: "Print one JSON object per check, then a summary object.") var json = false
  @Option(help: "Device type for the data-path checks (blk, net, rng); inferred from the features if omitted.")
  var device: String?
  @Option(help: "Reply timeout in milliseconds.") var timeout = 5000

  func run() throws {
    var type: VirtioDeviceType?
    if let device {
      guard let t = VirtioDeviceType(rawValue: device) else { throw ValidationError("unknown device type \(device)") }
      type = t
    }
    guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
    let checker = ConformanceChecker(socketPath: socketPath, timeoutMilliseconds: timeout, device: type)
    let json = self.json
    // Unbuffered: each result shows as soon as it is known.
    let emit: @Sendable (String) -> Void = { writeStandardOutput($0 + "\n") }
    checker.progress = { result in emit(json ? result.json : result.text) }
    let results = checker.run()
    let summary = CheckSummary(results)
    emit(json ? summary.json : summary.text)
    if summary.fail > 0 { throw ExitCode(1) }
  }
}
