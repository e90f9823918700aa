import Foundation
import Testing
import VhostBackend
import VhostConformance
import VhostDevices
import VhostProtocol
import VhostSystem
import VhostTooling

/// `vhost-user check` (the conformance checker) against our back-ends, qemu-storage-daemon and
/// DPDK's vhost PMD. Ours must pass every applicable check; for the peers the run must complete and
/// its failures are printed (each is discussed in docs as a peer deviation).
@Suite(.serialized)
struct CheckTests {
  static func report(_ label: String, _ results: [CheckResult]) {
    print("== vhost-user check: \(label)")
    for r in results { print(r.text) }
    print(CheckSummary(results).text)
    let failed = results.filter { $0.outcome == .fail }.map(\.name)
    if !failed.isEmpty { print("FAILED CHECKS (\(label)): \(failed.joined(separator: ", "))") }
  }

  /// Every check of a run, in order (robustness last), whatever the back-end.
  static func expectComplete(_ results: [CheckResult], sourceLocation: SourceLocation = #_sourceLocation) {
    let names = results.map(\.name)
    #expect(!names.contains("handshake.connect"), sourceLocation: sourceLocation)
    #expect(names.first == "handshake.get-features-reply", sourceLocation: sourceLocation)
    #expect(names.last == "robustness.ring-outside-memory", sourceLocation: sourceLocation)
    for group in ["handshake.", "reply-ack", "ring.", "memory.", "config.", "reconnect.", "robustness."] {
      #expect(names.contains { $0.hasPrefix(group) }, "no \(group) checks", sourceLocation: sourceLocation)
    }
    for r in results {
      let parsed = try? JSONSerialization.jsonObject(with: Data(r.json.utf8)) as? [String: String]
      #expect(parsed?["name"] == r.name && parsed?["outcome"] == r.outcome.rawValue, sourceLocation: sourceLocation)
    }
  }

  /// Runs the checker against `device` served in this process; ours must not fail anything, and
  /// skip only what it does not offer.
  static func checkOurs(_ device: VhostUserDevice, type: VirtioDeviceType, label: String) throws -> [CheckResult] {
    let dir = try TemporaryDirectory()
    let socket = dir.file("backend.sock")
    let backend = try InProcessBackend(device: device, socket: socket)
    defer { backend.stop() }
    let results = ConformanceChecker(socketPath: socket, timeoutMilliseconds: 5000, device: type).run()
    report(label, results)
    expectComplete(results)
    let failed = results.filter { $0.outcome == .fail }
    #expect(failed.isEmpty, "our \(label) back-end failed:\n\(failed.map(\.text).joined(separator: "\n"))")
    let notRun = results.filter { $0.outcome == .skip && $0.detail.hasPrefix("not run") }
    #expect(notRun.isEmpty, "checks not run:\n\(notRun.map(\.text).joined(separator: "\n"))")
    return results
  }

  /// A peer's FAILs must be among the deviations we analysed (docs and the issue's closing note
  /// explain each); anything else is either a new peer deviation or a checker bug — look.
  static func expectKnownDeviations(
    _ results: [CheckResult], _ known: Set<String>, _ peer: String, sourceLocation: SourceLocation = #_sourceLocation
  ) {
    let unexpected = results.filter { $0.outcome == .fail && !known.contains($0.name) }
    #expect(
      unexpected.isEmpty, "\(peer): FAILs not analysed yet:\n\(unexpected.map(\.text).joined(separator: "\n"))",
      sourceLocation: sourceLocation)
  }

  /// qemu-storage-daemon 7.2 (libvhost-user) deviations, each confirmed against QEMU's source.
  static let qsdDeviations: Set<String> = [
    "handshake.need-reply-on-explicit-reply",  // vu_send_reply keeps the request's NEED_REPLY bit (flags 0xd)
    "ring.disable",  // vu_set_vring_enable_exec only records the flag; the blk export processes anyway
    "config.offset",  // vu_blk_get_config(dev, config, len) has no offset: memcpy from offset 0
    "config.set-read-only",  // vu_set_config panics on failure but returns false: generic REPLY_ACK 0
    "reply-ack.failure-status",  // unhandled request: vu_panic, then the generic REPLY_ACK 0
  ]

  static func outcome(_ results: [CheckResult], _ name: String) -> CheckOutcome? {
    results.first { $0.name == name }?.outcome
  }

  @Test("check: our blk back-end passes every applicable check")
  func ourBlk() throws {
    let dir = try TemporaryDirectory()
    let image = dir.file("disk.img")
    try makeImage(image, size: 8 << 20)
    let results = try Self.checkOurs(try BlkDevice(path: image), type: .blk, label: "our blk")
    for name in ["ring.base-wrap", "memory.rem-mem-reg", "config.offset", "config.set-read-only"] {
      #expect(Self.outcome(results, name) == .pass, "\(name)")
    }
  }

  @Test("check: our net back-end (rxonly) passes every applicable check")
  func ourNet() throws {
    let results = try Self.checkOurs(NetDevice(forwarding: .rxonly), type: .net, label: "our net")
    #expect(Self.outcome(results, "reply-ack.NET_SET_MTU") == .pass)
    #expect(Self.outcome(results, "ring.restart-from-base") == .pass)
  }

  @Test("check: our rng back-end passes every applicable check")
  func ourRng() throws {
    let results = try Self.checkOurs(RngDevice(), type: .rng, label: "our rng")
    #expect(Self.outcome(results, "ring.disable") == .pass)
    #expect(Self.outcome(results, "config.get-config") == .skip)
  }

  /// A read-only blk offers bit 5 (BLK_F_RO), which is NET_F_MAC for net.
  @Test("check: the device type is inferred from the features when not given", arguments: [false, true])
  func inferred(readOnly: Bool) throws {
    let dir = try TemporaryDirectory()
    let image = dir.file("disk.img")
    try makeImage(image, size: 4 << 20)
    let socket = dir.file("backend.sock")
    let backend = try InProcessBackend(device: try BlkDevice(path: image, readOnly: readOnly), socket: socket)
    defer { backend.stop() }
    let results = ConformanceChecker(socketPath: socket, timeoutMilliseconds: 5000).run()
    #expect(results.first?.detail.contains("device inferred as blk") == true)
    #expect(!results.contains { $0.outcome == .fail })
  }

  @Test("check: a socket nobody listens on is one FAIL, and the run stops")
  func nothingListening() throws {
    let dir = try TemporaryDirectory()
    let results = ConformanceChecker(socketPath: dir.file("none.sock"), timeoutMilliseconds: 200).run()
    #expect(results.map(\.name) == ["handshake.connect"])
    #expect(results.first?.outcome == .fail)
    #expect(CheckSummary(results).fail == 1)
  }

  @Test("check: qemu-storage-daemon (libvhost-user) — the run completes; failures are printed")
  func qemuStorageDaemon() throws {
    let dir = try TemporaryDirectory()
    guard let (qsd, _, socket) = try QemuStorageDaemonTests.start(dir) else { return }
    defer { qsd.stop() }
    let results = ConformanceChecker(socketPath: socket, timeoutMilliseconds: 5000).run()
    Self.report("qemu-storage-daemon", results)
    print("-- qemu-storage-daemon log (tail):\n" + qsd.output.split(separator: "\n").suffix(40).joined(separator: "\n"))
    Self.expectComplete(results)
    #expect(results.first?.detail.contains("device inferred as blk") == true)
    #expect(Self.outcome(results, "ring.start-on-kick") == .pass)
    Self.expectKnownDeviations(results, Self.qsdDeviations, "qemu-storage-daemon")
    #expect(qsd.isRunning, "qemu-storage-daemon exited:\n\(qsd.output.suffix(2000))")
  }

  @Test("check: DPDK testpmd vhost PMD (rxonly) — the run completes; failures are printed")
  func dpdkVhostPMD() throws {
    let dir = try TemporaryDirectory()
    guard let (pmd, socket) = try DPDKTests.startVhostPMD(dir) else { return }
    defer { pmd.stop() }
    let results = ConformanceChecker(socketPath: socket, timeoutMilliseconds: 5000, device: .net).run()
    Self.report("DPDK vhost PMD", results)
    print(
      "-- testpmd log (VHOST lines, tail):\n"
        + pmd.output.split(separator: "\n").filter { $0.contains("VHOST") }.suffix(60).joined(separator: "\n"))
    Self.expectComplete(results)
    #expect(Self.outcome(results, "ring.start-on-kick") == .pass)
    Self.expectKnownDeviations(results, [], "DPDK vhost PMD")
    #expect(pmd.isRunning, "testpmd exited:\n\(pmd.output.suffix(2000))")
  }
}
