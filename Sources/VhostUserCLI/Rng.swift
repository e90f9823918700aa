import ArgumentParser
import VhostDevices

struct Rng: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "A virtio-rng back-end (entropy from getrandom).",
    discussion: "SIGUSR1 prints the bytes served per socket; SIGTERM, SIGINT and SIGHUP stop it cleanly.")
  @OptionGroup var options: BackendOptions
  func run() throws {
    let devices = RngDevices()
    try options.serve(
      {
        let d = RngDevice()
        devices.append(d)
        return d
      }, status: { devices.report() })
  }
}

/// The rng devices of one daemon (one per socket), for the SIGUSR1 report.
final class RngDevices: @unchecked Sendable {
  private var devices: [RngDevice] = []
  func append(_ d: RngDevice) { devices.append(d) }
  func report() -> String {
    "rng: "
      + devices.enumerated().map { "socket \($0.offset): \($0.element.bytesServed) bytes" }.joined(separator: ", ")
  }
}
