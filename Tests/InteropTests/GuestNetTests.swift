import Foundation
import Testing
import VhostTooling

#if canImport(Glibc)
  import Glibc
#endif

/// QEMU 7.2 guests (TCG) on our `vhost-user net` switch (the executable). All traffic stays between
/// the guests, or between a guest and a network namespace the test creates.
///
/// Two QEMU 7.2 quirks under TCG, found with these tests:
/// - virtio-net-pci with MSI-X crashes QEMU when the guest driver starts the vhost-user device
///   (SIGSEGV in `msix_set_vector_notifiers` from `vhost_net_start`), so the guests use INTx
///   (`vectors=0`). With INTx the guests' kicks do reach the back-end: the interrupt-mode runs
///   below pass without `--poll`.
/// - With `queues=2`, QEMU 7.2 sends ADD_MEM_REG once per queue pair (see `addMemReg`).
@Suite(.serialized)
struct GuestNetTests {
  struct Setup {
    let dir: TemporaryDirectory
    let kernel: String
    let binary: String
  }

  static func setup() -> Setup? {
    guard Peers.require("qemu-system-x86_64", package: "qemu-system-x86") != nil else { return nil }
    guard let kernel = GuestVM.kernel else {
      if Peers.required { Issue.record("no /boot/vmlinuz-*: install linux-image-amd64") }
      return nil
    }
    guard let binary = vhostUserBinary else {
      Issue.record("the vhost-user executable was not built next to the tests")
      return nil
    }
    guard let dir = try? TemporaryDirectory(prefix: "vhost-guest-net") else {
      Issue.record("no temporary directory")
      return nil
    }
    return Setup(dir: dir, kernel: kernel, binary: binary)
  }

  /// QEMU arguments for a virtio-net-pci NIC on `socket`.
  static func nic(socket: String, mac: String, queues: Int) -> [String] {
    let mq = queues > 1 ? ",queues=\(queues)" : ""
    return [
      "-chardev", "socket,id=c1,path=\(socket)", "-netdev", "vhost-user,id=n0,chardev=c1\(mq)",
      "-device", "virtio-net-pci,netdev=n0,mac=\(mac),vectors=0\(queues > 1 ? ",mq=on" : "")",
    ]
  }

  /// Starts `vhost-user net` with `arguments` and waits for its sockets.
  static func startSwitch(_ s: Setup, _ arguments: [String], sockets: [String]) throws -> ManagedProcess {
    let p = try ManagedProcess(s.binary, ["net"] + arguments, logPath: s.dir.file("switch.log"))
    for socket in sockets {
      #expect(p.waitForFile(socket, milliseconds: 10_000), "switch did not start: \(p.output)")
    }
    return p
  }

  /// Ends the switch (SIGTERM) and returns its report (counters per port and queue).
  static func stopSwitch(_ p: ManagedProcess) -> String {
    kill(p.pid, SIGTERM)
    #expect(p.waitExit(milliseconds: 10_000), "switch did not exit on SIGTERM")
    #expect(p.waitStatus == 0, "switch exit status \(String(describing: p.waitStatus))")
    return p.output
  }

  /// The packets count of `queue` of port `port` in a switch report.
  static func queuePackets(_ report: String, port: Int, queue: Int) -> Int? {
    guard let portLine = report.range(of: "port \(port) (") else { return nil }
    let rest = report[portLine.upperBound...]
    guard let q = rest.range(of: "queue \(queue) (") else { return nil }
    guard let p = rest[q.upperBound...].range(of: "packets ") else { return nil }
    return Int(rest[p.upperBound...].prefix { $0.isNumber })
  }

  /// The `N` of busybox ping's "N packets received".
  static func pingReplies(_ output: String) -> Int? {
    guard let r = output.range(of: " packets received") else { return nil }
    let before = output[..<r.lowerBound]
    return Int(String(before.reversed().prefix { $0.isNumber }.reversed()))
  }

  /// The value after `marker ` on a guest's console.
  static func field(_ output: String, _ marker: String) -> String? {
    guard let r = output.range(of: marker + " ") else { return nil }
    return String(output[r.upperBound...].prefix { !$0.isWhitespace })
  }

  struct Mode: CustomTestStringConvertible, Sendable {
    let queues: Int
    let poll: Bool
    var testDescription: String {
      "queues=\(queues)\(queues > 1 ? " mq=on" : ""), \(poll ? "--poll" : "interrupt mode")"
    }
    var switchArguments: [String] {
      var a = ["--queues", "\(queues)"]
      // One busy-polling thread per port: two guests and more spinning threads starve on 2 cores.
      if poll { a += ["--poll", "--queues-per-thread", "\(queues * 2)"] }
      return a
    }
  }

  @Test(
    "two guests on two sockets of one switch: ping (≥ 20 replies) and 8 MiB over nc with matching md5",
    arguments: [Mode(queues: 1, poll: false), Mode(queues: 1, poll: true), Mode(queues: 2, poll: false)])
  func twoGuests(mode: Mode) throws {
    guard let s = Self.setup() else { return }
    let sockets = [s.dir.file("a.sock"), s.dir.file("b.sock")]
    let sw = try Self.startSwitch(
      s, sockets.flatMap { ["--socket-path", $0] } + mode.switchArguments, sockets: sockets)
    // With two queue pairs the guests have two vCPUs; pinning ping to CPU 1 and nc to CPU 0 puts
    // their frames on transmit queues 1 and 0 (the driver maps CPU n to queue pair n).
    let onCPU1 = mode.queues > 1 ? "taskset 2 " : ""
    let onCPU0 = mode.queues > 1 ? "taskset 1 " : ""
    let scriptA = """
      ip link set lo up
      ip link set eth0 up
      ip addr add 10.0.0.1/24 dev eth0
      i=0
      while ! ping -c 1 -W 1 10.0.0.2 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 60 ] && break; done
      \(onCPU1)ping -c 25 -i 0.1 10.0.0.2
      dd if=/dev/urandom of=/tmp/data bs=1M count=8 2>/dev/null
      echo "SENT-MD5 $(md5sum < /tmp/data)"
      for i in 1 2 3 4 5 6 7 8 9 10; do \(onCPU0)nc 10.0.0.2 5000 < /tmp/data && break; sleep 1; done
      """
    let scriptB = """
      ip link set lo up
      ip link set eth0 up
      ip addr add 10.0.0.2/24 dev eth0
      nc -l -p 5000 > /tmp/recv
      echo "RECV-BYTES $(wc -c < /tmp/recv)"
      echo "RECV-MD5 $(md5sum < /tmp/recv)"
      """
    var vms: [GuestVM] = []
    for (i, script) in [scriptA, scriptB].enumerated() {
      let dir = s.dir.file("guest\(i)")
      try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
      let initramfs = try GuestVM.buildInitramfs(script: script, makeInitramfs: makeInitramfsScript, in: dir)
      vms.append(
        try GuestVM(
          kernel: s.kernel, initramfs: initramfs,
          deviceArgs: Self.nic(socket: sockets[i], mac: "52:54:00:00:00:0\(i + 1)", queues: mode.queues),
          log: s.dir.file("guest\(i).log"), smp: mode.queues > 1 ? 2 : 1))
    }
    for (i, vm) in vms.enumerated() {
      #expect(vm.waitExit(seconds: 180), "guest \(i) did not power off:\n\(vm.output.suffix(3000))")
    }
    let report = Self.stopSwitch(sw)
    let (a, b) = (vms[0].output, vms[1].output)
    let replies = Self.pingReplies(a) ?? 0
    #expect(replies >= 20, "ping replies \(replies):\n\(a.suffix(2500))\n\(report)")
    let sent = Self.field(a, "SENT-MD5")
    let received = Self.field(b, "RECV-MD5")
    #expect(sent != nil && sent?.count == 32, "guest A:\n\(a.suffix(2000))")
    #expect(Self.field(b, "RECV-BYTES") == "8388608", "guest B:\n\(b.suffix(2000))\n\(report)")
    #expect(received == sent, "md5 sent \(String(describing: sent)), received \(String(describing: received))")
    #expect(a.contains("GUEST-TEST-EXIT 0") && b.contains("GUEST-TEST-EXIT 0"))
    // 8 MiB went A → B on port 0's transmit queue 0, in frames larger than the MTU: the guests
    // negotiate TSO with the switch, which passes the frames through whole (see NetGSOTests).
    let aTx = Self.queueBytes(report, port: 0, queue: 1) ?? 0
    let aTxPackets = Self.queuePackets(report, port: 0, queue: 1) ?? 0
    #expect(aTx > 8 << 20, "port 0 tx 0 carried \(aTx) bytes:\n\(report)")
    #expect(aTxPackets > 0 && aTx / aTxPackets > 1514, "port 0 tx 0: \(aTxPackets) packets, \(aTx) bytes")
    if mode.queues > 1 {
      // Both queue pairs carried traffic: ping on CPU 1 went out on transmit queue 1.
      let aTx1 = Self.queuePackets(report, port: 0, queue: 3) ?? 0
      #expect(aTx1 >= 20, "port 0 tx 1 carried \(aTx1) packets:\n\(report)")
    }
    print("guest net (\(mode.testDescription)): \(replies) ping replies, md5 \(sent ?? "?") both sides")
  }

  /// Runs `ip` (or another tool) and returns its exit status and output.
  static func run(_ executable: String, _ arguments: [String], log: String) throws -> (Int32?, String) {
    let p = try ManagedProcess(executable, arguments, logPath: log)
    #expect(p.waitExit(milliseconds: 30_000), "\(executable) \(arguments) did not finish")
    return (p.waitStatus, p.output)
  }

  /// A `vhost-user net` switch with one socket and a TAP port, the TAP moved into a network
  /// namespace of its own (10.0.1.1/24, up). Delete the namespace with `remove()`.
  struct TapNamespace {
    let ip: String
    let busybox: String
    let tap: String
    let ns: String
    let socket: String
    let sw: ManagedProcess
    let log: String

    func remove() { _ = try? GuestNetTests.run(ip, ["netns", "del", ns], log: log) }
  }

  /// Sets up a `TapNamespace` (names from `prefix`); nil when a peer or root is missing (recorded
  /// as a failure when peers are required).
  static func tapNamespace(_ s: Setup, prefix: String) throws -> TapNamespace? {
    guard let ip = Peers.require("ip", package: "iproute2"),
      let busybox = Peers.require("busybox", package: "busybox-static")
    else { return nil }
    guard getuid() == 0, FileManager.default.fileExists(atPath: "/dev/net/tun") else {
      let message = "TAP and network namespaces need root and /dev/net/tun"
      if Peers.required { Issue.record(Comment(rawValue: message)) } else { print("SKIP: \(message)") }
      return nil
    }
    let tag = "\(getpid() % 100_000)"
    let tap = "vu\(prefix.prefix(1))\(tag)"
    let ns = "vhost-\(prefix)-test-\(tag)"
    let socket = s.dir.file("g.sock")
    let sw = try startSwitch(s, ["--socket-path", socket, "--tap", tap], sockets: [socket])
    let log = s.dir.file("ip.log")
    #expect(try run(ip, ["netns", "add", ns], log: log).0 == 0)
    // The switch created the TAP in this namespace; moved, it keeps its file descriptor.
    for args in [
      ["link", "set", tap, "netns", ns], ["-n", ns, "addr", "add", "10.0.1.1/24", "dev", tap],
      ["-n", ns, "link", "set", tap, "up"], ["-n", ns, "link", "set", "lo", "up"],
    ] {
      let (status, out) = try run(ip, args, log: log)
      #expect(status == 0, "ip \(args): \(out)")
    }
    return TapNamespace(ip: ip, busybox: busybox, tap: tap, ns: ns, socket: socket, sw: sw, log: log)
  }

  @Test("a TAP port inside a network namespace the test creates pings the guest (and reaches it over TCP)")
  func tapInNamespace() throws {
    guard let s = Self.setup(), let t = try Self.tapNamespace(s, prefix: "tnet") else { return }
    defer { t.remove() }
    let (ip, busybox, ns, socket, sw, tap) = (t.ip, t.busybox, t.ns, t.socket, t.sw, t.tap)
    let initramfs = try GuestVM.buildInitramfs(
      script: """
        ip link set lo up
        ip link set eth0 up
        ip addr add 10.0.1.2/24 dev eth0
        i=0
        while ! ping -c 1 -W 1 10.0.1.1 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 60 ] && break; done
        echo "GUEST-NET-UP $i"
        echo "GOT $(nc -l -p 7000)"
        """, makeInitramfs: makeInitramfsScript, in: s.dir.path)
    let vm = try GuestVM(
      kernel: s.kernel, initramfs: initramfs,
      deviceArgs: Self.nic(socket: socket, mac: "52:54:00:00:00:05", queues: 1), log: s.dir.file("guest.log"))
    #expect(vm.process.waitForOutput("GUEST-NET-UP", milliseconds: 120_000), "guest:\n\(vm.output.suffix(3000))")
    let (pingStatus, ping) = try Self.run(
      ip, ["netns", "exec", ns, busybox, "ping", "-c", "5", "-i", "0.2", "10.0.1.2"], log: s.dir.file("ping.log"))
    #expect(pingStatus == 0)
    #expect(Self.pingReplies(ping) == 5, "namespace → guest:\n\(ping)\n\(vm.output.suffix(1500))")
    let (ncStatus, _) = try Self.run(
      ip, ["netns", "exec", ns, "/bin/sh", "-c", "echo tap-says-hello | \(busybox) nc 10.0.1.2 7000"],
      log: s.dir.file("nc.log"))
    #expect(ncStatus == 0)
    #expect(vm.waitExit(seconds: 60), "guest did not power off:\n\(vm.output.suffix(2000))")
    #expect(vm.output.contains("GOT tap-says-hello"), "guest:\n\(vm.output.suffix(2000))")
    let report = Self.stopSwitch(sw)
    #expect(report.contains("port 1 (tap \(tap))"), "\(report)")
    // The echo requests and the TCP segments came in from the TAP and went back out to it.
    let toTap = report.range(of: "to tap: packets ").map { Int(report[$0.upperBound...].prefix { $0.isNumber }) ?? 0 }
    #expect((toTap ?? 0) >= 5, "\(report)")
  }
}
