import ArgumentParser
import VhostFrontend
import VhostProtocol

struct Probe: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Connect to a vhost-user back-end and print what it offers.")

  @Option(help: "The back-end's socket.") var socketPath: String
  @Option(help: "Device type for decoding feature bits and config space (blk, net, rng); inferred if omitted.")
  var device: String?
  @Flag(help: "Print one JSON object.") var json = false
  @Option(help: "Reply timeout in milliseconds.") var timeout = 5000

  func run() throws {
    var type: VirtioDeviceType?
    if let device {
      guard let t = VirtioDeviceType(rawValue: device) else { throw ValidationError("unknown device type \(device)") }
      type = t
    }
    do {
      let report = try ProbeReport.collect(path: socketPath, device: type, timeoutMilliseconds: timeout)
      print(json ? report.json : report.text)
    } catch {
      throw CLIError("probe of \(socketPath) failed: \(error)")
    }
  }
}

struct CLIError: Error, CustomStringConvertible {
  let description: String
  init(_ d: String) { description = d }
}
