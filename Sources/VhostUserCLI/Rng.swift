import ArgumentParser
import VhostDevices

struct Rng: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "A virtio-rng back-end (entropy from getrandom).")
  @OptionGroup var options: BackendOptions
  func run() throws { try options.serve { RngDevice() } }
}
