import Foundation
import Testing
import VhostBackend
import VhostDevices
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTooling

#if canImport(Glibc)
  import Glibc
#endif

/// Resident set size of this process in KiB (/proc/self/statm).
func residentKiB() -> Int {
  guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
  let fields = s.split(separator: " ")
  return fields.count > 1 ? (Int(fields[1]) ?? 0) * 4 : 0
}

/// 1000 connect / negotiate / set up a ring / disconnect cycles against each of our back-ends (in
/// this process): the open-fd count returns to where it was and RSS stays flat.
@Suite(.serialized)
struct SoakTests {
  static func cycles(_ device: VhostUserDevice, queues: Int, count: Int = 1000) throws -> (fds: [Int], rss: [Int]) {
    let dir = try TemporaryDirectory()
    let socket = dir.file("soak.sock")
    let server = BackendServer(listener: try UnixListener(path: socket), device: device)
    server.startInBackground()
    defer { server.stopAndWait() }
    var fds: [Int] = []
    var rss: [Int] = []
    var configuration = FrontendConfiguration()
    configuration.timeoutMilliseconds = 5000
    for i in 0...count {
      do {
        let connection = try VhostUserConnection.connect(
          path: socket, configuration: configuration, retryMilliseconds: 2000)
        let frontend = connection.device()
        try frontend.negotiate()
        let driver = try DeviceDriver(
          frontend: frontend, features: device.features.intersection([.version1]), queueCount: queues, queueSize: 64,
          memorySize: 1 << 20)
        _ = try driver.stop()
        connection.close()
      }
      // Wait until the server is back to accepting before sampling.
      let deadline = Date().addingTimeInterval(5)
      while server.currentSession != nil && Date() < deadline { usleep(1000) }
      if i == 50 || i % 250 == 0 {
        fds.append(OwnedFD.openCount())
        rss.append(residentKiB())
      }
    }
    if ProcessInfo.processInfo.environment["SOAK_DEBUG"] != nil {
      var kinds: [String: Int] = [:]
      for f in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
        let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + f)) ?? "?"
        kinds[
          String(target.prefix(while: { $0 != "[" && $0 != ":" }))
            + (target.contains("eventfd") ? "eventfd" : target.contains("eventpoll") ? "epoll" : ""), default: 0] += 1
      }
      print("fd kinds: \(kinds)")
    }
    return (fds, rss)
  }

  func check(_ name: String, _ device: VhostUserDevice, queues: Int) throws {
    let (fds, rss) = try Self.cycles(device, queues: queues)
    print("soak \(name): open fds \(fds), RSS KiB \(rss)")
    // After warm-up (sample at cycle 50) nothing grows. Other suites running in parallel open and
    // close descriptors too, so allow a little noise: a leak of even one per cycle would be ~950.
    if let warm = fds.dropFirst().first, let last = fds.last {
      #expect(last - warm <= 16, "open fds grew: \(fds)")
    }
    // Under AddressSanitizer RSS is dominated by its shadow memory and quarantine; fds still count.
    let asan = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__asan_init") != nil
    if !asan, let warm = rss.dropFirst().first, let last = rss.last {
      #expect(last - warm < 8 * 1024, "RSS grew from \(warm) to \(last) KiB")
    }
  }

  @Test("blk back-end: 1000 cycles, fds and RSS flat")
  func blk() throws {
    let dir = try TemporaryDirectory()
    let image = dir.file("disk.img")
    try makeImage(image, size: 4 << 20)
    try check("blk", try BlkDevice(path: image), queues: 1)
  }

  @Test("net back-end: 1000 cycles, fds and RSS flat")
  func net() throws { try check("net", NetDevice(), queues: 2) }

  @Test("rng back-end: 1000 cycles, fds and RSS flat")
  func rng() throws { try check("rng", RngDevice(), queues: 1) }
}
