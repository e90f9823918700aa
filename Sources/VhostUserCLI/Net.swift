import ArgumentParser
import VhostBackend
import VhostDevices
import VhostSystem

#if canImport(Glibc)
  import Glibc
#endif

struct Net: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "A virtio-net back-end: every socket (and TAP) is a port of one switch.",
    discussion: """
      Forwarding modes: switch (a learning L2 switch between all ports), rxonly (count and drop), \
      txonly (fill every receive buffer with generated frames), io (port pairs 0<->1, 2<->3, ...). \
      Counters per port and queue are printed on SIGUSR1 and at exit.
      """)
  @OptionGroup var options: BackendOptions
  @Option(help: "Forwarding mode: switch, rxonly, txonly or io.")
  var forward: String = "switch"
  @Option(help: "Queue pairs per port.") var queues = 1
  @Option(help: "Frame size for txonly.") var txpkts = 64
  @Option(help: "Largest MTU accepted (NET_SET_MTU may lower a port's).") var mtu = 1500
  @Option(help: "MAC address of the first port (config space); port N gets it plus N.")
  var mac = "52:54:00:12:34:56"
  @Option(help: "Add a TAP device as a switch port (created if missing; repeat for several).")
  var tap: [String] = []
  @Option(help: "Seconds a learned MAC address stays valid.") var macAgeing: Double = 300
  @Option(help: "Frames that may wait for a port's receive buffers.") var pendingFrames = 1024

  func validate() throws {
    if options.printCapabilities { return }
    guard NetSwitch.Forwarding(rawValue: forward) != nil else {
      throw ValidationError("--forward must be one of \(NetSwitch.Forwarding.allCases.map(\.rawValue))")
    }
    guard (1...128).contains(queues) else { throw ValidationError("--queues must be 1...128") }
    guard (68...65535).contains(mtu) else { throw ValidationError("--mtu must be 68...65535") }
    guard (14...(mtu + 18)).contains(txpkts) else { throw ValidationError("--txpkts must be 14...MTU+18") }
    guard let address = Self.parseMAC(mac) else { throw ValidationError("--mac must look like 52:54:00:12:34:56") }
    guard address[0] & 1 == 0, address != [0, 0, 0, 0, 0, 0] else {
      throw ValidationError("--mac \(mac) is a multicast, broadcast or zero address; a port needs a unicast one")
    }
    guard (1...65536).contains(pendingFrames) else { throw ValidationError("--pending-frames must be 1...65536") }
  }

  static func parseMAC(_ s: String) -> [UInt8]? {
    let parts = s.split(separator: ":")
    guard parts.count == 6 else { return nil }
    let bytes = parts.compactMap { $0.count <= 2 ? UInt8($0, radix: 16) : nil }
    return bytes.count == 6 ? bytes : nil
  }

  /// The MAC of port `n`: the base address plus n (in its last three bytes).
  static func mac(_ base: [UInt8], plus n: Int) -> [UInt8] {
    var v = (UInt32(base[3]) << 16 | UInt32(base[4]) << 8 | UInt32(base[5])) &+ UInt32(n)
    v &= 0xff_ffff
    return Array(base[0..<3]) + [UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)]
  }

  func run() throws {
    let mode = NetSwitch.Forwarding(rawValue: forward) ?? .switch
    let base = Self.parseMAC(mac) ?? [0x52, 0x54, 0, 0x12, 0x34, 0x56]
    if options.printCapabilities {
      print("{\n  \"type\": \"net\",\n  \"features\": []\n}")
      return
    }
    // Before any thread exists (TAP readers, workers): SIGTERM/SIGINT/SIGHUP blocked everywhere.
    DaemonSignals.blockTermination()
    let resources = DaemonResources()
    defer { resources.release() }

    let configuration = options.configuration(socket: nil)
    let sw = NetSwitch(
      forwarding: mode, ageingSeconds: macAgeing,
      wakeReceivers: !configuration.poll && (mode == .switch || mode == .io))
    var ports: [NetDevice] = []
    var servers: [BackendServer] = []
    func addPort(_ listener: UnixListener, name: String) {
      let port = NetDevice(
        switch: sw, name: name, pairs: queues, mac: Self.mac(base, plus: ports.count), mtu: UInt16(mtu),
        txFrameSize: txpkts, pendingFrames: pendingFrames)
      ports.append(port)
      servers.append(port.makeServer(listener: listener, configuration: configuration))
    }
    if let fd = options.fd {
      guard UnixListener.isListeningSocket(fd) else {
        throw CLIError("--fd \(fd) is not a listening Unix stream socket")
      }
      addPort(UnixListener(inheriting: OwnedFD(taking: fd)), name: "fd \(fd)")
    }
    for path in options.socketPath { addPort(try resources.listen(path), name: "socket \(path)") }
    var taps: [NetTap] = []
    for name in tap {
      let t = try NetTap(name: name, mtu: mtu)
      if !t.offloads { Self.emit("tap \(name): no TUNSETOFFLOAD: TCP GSO frames for it are cut into segments") }
      sw.add(t)
      taps.append(t)
    }

    let all = servers
    let log = options.logger(socket: nil)
    DaemonSignals.start(
      onTerminate: { name in
        log.info("\(name): stopping")
        for s in all { s.stop() }
      }, onStatus: { Self.emit(sw.report()) })
    for t in taps { t.start() }
    debugTrapIfAsked()
    for s in servers.dropLast() { s.startInBackground() }
    log.info("serving \(ports.count) port(s), forwarding \(mode.rawValue)")
    servers.last?.run()
    for s in servers.dropLast() { s.stopAndWait() }
    for t in taps { t.stop() }
    sw.shutdown()
    let r = ports.reduce(NetCounters()) { $0 + $1.received }
    let d = ports.reduce(NetCounters()) { $0 + $1.delivered }
    Self.emit(
      sw.report()
        + "\nreceived from drivers: \(r.packets) packets, \(r.bytes) bytes, \(r.drops) drops, \(r.errors) errors"
        + "\ndelivered to drivers:  \(d.packets) packets, \(d.bytes) bytes, \(d.drops) drops, \(d.errors) errors")
  }

  /// Writes a report to stderr at once (unbuffered, whole lines), so stdout stays clean.
  static func emit(_ text: String) {
    writeStandardError(text + "\n")
  }
}
