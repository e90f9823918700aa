import Foundation
import Testing
import VhostTooling

#if canImport(Glibc)
  import Glibc
#endif

extension GuestNetTests {
  /// The bytes count of `queue` of port `port` in a switch report.
  static func queueBytes(_ report: String, port: Int, queue: Int) -> Int? {
    guard let portLine = report.range(of: "port \(port) (") else { return nil }
    let rest = report[portLine.upperBound...]
    guard let q = rest.range(of: "queue \(queue) (") else { return nil }
    guard let b = rest[q.upperBound...].range(of: "bytes ") else { return nil }
    return Int(rest[b.upperBound...].prefix { $0.isNumber })
  }
}

/// TCP segmentation offload across the TAP port: a QEMU 7.2 guest (which negotiates TSO with the
/// switch) and a network namespace whose TAP has checksum and TSO offloads on (TUNSETOFFLOAD)
/// move 4 MiB each way over TCP; GSO frames cross the TAP in both directions.
@Suite(.serialized)
struct GuestNetGSOTests {
  /// The average frame size of the report's line starting `label` ("to tap: packets N bytes M").
  static func averageFrame(_ report: String, _ label: String) -> Int? {
    guard let r = report.range(of: label + "packets ") else { return nil }
    let rest = report[r.upperBound...]
    guard let packets = Int(rest.prefix { $0.isNumber }), packets > 0,
      let b = rest.range(of: "bytes "), let bytes = Int(rest[b.upperBound...].prefix { $0.isNumber })
    else { return nil }
    return bytes / packets
  }

  @Test(
    "a TAP port in a network namespace: 4 MiB each way over TCP with the guest, md5 matching, GSO frames across the TAP",
    arguments: [true, false])
  func tapTCP(guestTSO: Bool) throws {
    guard let s = GuestNetTests.setup(), let t = try GuestNetTests.tapNamespace(s, prefix: "gso") else { return }
    defer { t.remove() }
    let (ip, busybox, ns, socket, sw) = (t.ip, t.busybox, t.ns, t.socket, t.sw)
    // 4 MiB for the guest, and where the namespace keeps what the guest sends.
    let toGuest = s.dir.file("to-guest")
    let fromGuest = s.dir.file("from-guest")
    var random = [UInt8](repeating: 0, count: 4 << 20)
    for i in random.indices { random[i] = UInt8(truncatingIfNeeded: (i &* 2_654_435_761) >> 13 ^ i >> 7) }
    try Data(random).write(to: URL(fileURLWithPath: toGuest))
    let initramfs = try GuestVM.buildInitramfs(
      script: """
        ip link set lo up
        ip link set eth0 up
        ip addr add 10.0.1.2/24 dev eth0
        i=0
        while ! ping -c 1 -W 1 10.0.1.1 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 60 ] && break; done
        echo "GUEST-NET-UP $i"
        nc -l -p 7000 > /tmp/recv
        echo "RECV-BYTES $(wc -c < /tmp/recv)"
        echo "RECV-MD5 $(md5sum < /tmp/recv)"
        dd if=/dev/urandom of=/tmp/data bs=1M count=4 2>/dev/null
        echo "SENT-MD5 $(md5sum < /tmp/data)"
        for i in 1 2 3 4 5 6 7 8 9 10; do nc 10.0.1.1 7001 < /tmp/data && break; sleep 1; done
        """, makeInitramfs: makeInitramfsScript, in: s.dir.path)
    let vm = try GuestVM(
      kernel: s.kernel, initramfs: initramfs,
      deviceArgs: GuestNetTests.nic(socket: socket, mac: "52:54:00:00:00:06", queues: 1).map {
        // Without GUEST_CSUM (and so without GUEST_TSO) the guest gets the kernel's TSO frames as
        // segments whose checksums the switch completed, and its TCP stack checks every one.
        guestTSO
          ? $0
          : $0.replacingOccurrences(
            of: "vectors=0", with: "vectors=0,guest_csum=off,guest_tso4=off,guest_tso6=off,guest_ecn=off")
      },
      log: s.dir.file("guest.log"))
    // The namespace listens for the guest's data before the guest is told to send it. busybox nc
    // ends a connection once its stdin ends, so its stdin stays open (the pipe from sleep); it is
    // ended below once the guest's data is in.
    let listener = try ManagedProcess(
      ip, ["netns", "exec", ns, "/bin/sh", "-c", "sleep 600 | \(busybox) nc -l -p 7001 > \(fromGuest)"],
      logPath: s.dir.file("listener.log"))
    defer { kill(-listener.pid, SIGKILL) }
    #expect(vm.process.waitForOutput("GUEST-NET-UP", milliseconds: 120_000), "guest:\n\(vm.output.suffix(3000))")
    // The guest's listener starts right after it says so: connecting is retried until it accepts.
    let (sendStatus, sendOutput) = try GuestNetTests.run(
      ip,
      [
        "netns", "exec", ns, "/bin/sh", "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10; do \(busybox) nc 10.0.1.2 7000 < \(toGuest) && exit 0; sleep 1; done; exit 1",
      ], log: s.dir.file("send.log"))
    #expect(sendStatus == 0, "namespace → guest: \(sendOutput)")
    #expect(vm.waitExit(seconds: 180), "guest did not power off:\n\(vm.output.suffix(2000))")
    let size = { (try? FileManager.default.attributesOfItem(atPath: fromGuest)[.size] as? Int) ?? 0 }
    #expect(netWait(seconds: 60) { size() == 4 << 20 }, "the namespace got \(size()) bytes from the guest")
    kill(-listener.pid, SIGTERM)
    #expect(listener.waitExit(milliseconds: 10_000), "namespace listener still running")
    let report = GuestNetTests.stopSwitch(sw)
    let out = vm.output
    let (_, expectedMD5) = try GuestNetTests.run(busybox, ["md5sum", toGuest], log: s.dir.file("md5a.log"))
    let (_, receivedMD5) = try GuestNetTests.run(busybox, ["md5sum", fromGuest], log: s.dir.file("md5b.log"))
    #expect(GuestNetTests.field(out, "RECV-BYTES") == "\(4 << 20)", "guest:\n\(out.suffix(2000))\n\(report)")
    #expect(
      GuestNetTests.field(out, "RECV-MD5").map { expectedMD5.hasPrefix($0) } == true,
      "guest got \(String(describing: GuestNetTests.field(out, "RECV-MD5"))), sent \(expectedMD5)")
    let guestSent = GuestNetTests.field(out, "SENT-MD5")
    #expect(guestSent?.count == 32, "guest:\n\(out.suffix(2000))")
    #expect(
      guestSent.map { receivedMD5.hasPrefix($0) } == true,
      "namespace got \(receivedMD5), guest sent \(String(describing: guestSent))\n\(report)\nguest:\n\(out.suffix(1500))\nlistener:\n\(listener.output)"
    )
    #expect(out.contains("GUEST-TEST-EXIT 0"))
    // Frames larger than the MTU crossed the TAP both ways: TSO frames passed through whole.
    let toTap = Self.averageFrame(report, "to tap: ") ?? 0
    let fromTap = Self.averageFrame(report, "from tap: ") ?? 0
    #expect(toTap > 1514 && fromTap > 1514, "average frame to tap \(toTap), from tap \(fromTap):\n\(report)")
    // Without GUEST_TSO the frames from the TAP reached the guest as segments.
    #expect(report.contains("gso frames segmented") != guestTSO, "\(report)")
    print("tap TCP: 4 MiB each way; average frame to tap \(toTap), from tap \(fromTap)\n\(report)")
  }
}
