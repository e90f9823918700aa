import ArgumentParser

@main
struct VhostUser: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "vhost-user",
    abstract: "vhost-user front-end, back-ends and tools in Swift.",
    subcommands: [Demo.self, Probe.self, Blk.self, Net.self, Rng.self, Bench.self, Trace.self, Check.self])
}
