import ArgumentParser
import VhostDevices

struct Net: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "A virtio-net back-end.")
  @OptionGroup var options: BackendOptions
  @Option(help: "Forwarding mode: rxonly (count and drop), txonly (generate frames).")
  var forward: String = "rxonly"
  @Option(help: "Queue pairs.") var queues = 1
  @Option(help: "Frame size for txonly.") var txpkts = 64
  @Option(help: "Largest MTU accepted.") var mtu = 1500

  func run() throws {
    guard let mode = NetDevice.Forwarding(rawValue: forward) else {
      throw ValidationError("--forward must be one of \(NetDevice.Forwarding.allCases.map(\.rawValue))")
    }
    let device = NetDevice(forwarding: mode, pairs: queues, mtu: UInt16(mtu), txFrameSize: txpkts)
    try options.serve(device)
    let r = device.received
    let d = device.delivered
    print("received from driver: \(r.packets) packets, \(r.bytes) bytes, \(r.errors) errors")
    print("delivered to driver:  \(d.packets) packets, \(d.bytes) bytes, \(d.drops) drops")
  }
}
