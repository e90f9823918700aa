import Foundation
import Testing
import VhostBackend
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTransport
import Virtqueue

#if canImport(Glibc)
  import Glibc
#endif

/// Threads of this process (/proc/self/task).
func threadCount() -> Int {
  (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1
}

/// CPU time this process has used so far, in seconds (getrusage).
func cpuSeconds() -> Double {
  var u = rusage()
  getrusage(RUSAGE_SELF.rawValue, &u)
  return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
}

/// Every byte of `memory` from `offset` to its end is still zero (nothing was written where no
/// ring or buffer was handed out).
func expectUntouched(_ memory: DriverMemory, from offset: UInt64, sourceLocation: SourceLocation = #_sourceLocation)
  throws
{
  let bytes = try memory.memory.read(at: offset, count: memory.size - Int(offset))
  let dirty = bytes.firstIndex { $0 != 0 }
  #expect(
    dirty == nil, "a write outside every ring and buffer, at offset \(offset + UInt64(dirty ?? 0))",
    sourceLocation: sourceLocation)
}

/// The rules of SECURITY.md, each tried the way a hostile front-end would, beyond the cases of
/// HostileTests: after every one the back-end serves a fresh connection within a second, and
/// descriptors and threads are back where they were.
extension BackendTests {
  /// A fresh connection is served (a full echo) within a second of `since`.
  func expectServedPromptly(_ backend: LoopbackBackend, sourceLocation: SourceLocation = #_sourceLocation) throws {
    #expect(
      backend.waitIdle(timeout: 1), "the last session did not end within a second", sourceLocation: sourceLocation)
    let start = Date()
    try expectHealthy(backend, sourceLocation: sourceLocation)
    #expect(
      Date().timeIntervalSince(start) < 1, "a fresh connection took over a second", sourceLocation: sourceLocation)
  }

  func expectBaseline(
    descriptors: Int, listing: [String], threads: Int, sourceLocation: SourceLocation = #_sourceLocation
  ) {
    expectDescriptorCount(descriptors, before: listing, sourceLocation: sourceLocation)
    #expect(
      waitUntil { threadCount() <= threads }, "threads: \(threads) before, \(threadCount()) after",
      sourceLocation: sourceLocation)
  }

  @Test("a call descriptor that is a full pipe nobody reads never blocks the worker or the teardown")
  func callPipeNobodyReads() throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 1))
    defer { backend.stop() }
    try expectHealthy(backend)
    #expect(backend.waitIdle())
    let fds = settledDescriptorCount()
    let listing = openDescriptors()
    let threads = threadCount()
    do {
      let connection = try backend.connect()
      defer { connection.close() }
      let frontend = connection.device()
      let driver = try DeviceDriver(frontend: frontend, features: .version1, queueCount: 1, queueSize: 256)
      let q = driver.queues[0]
      let (readEnd, writeEnd) = try makePipe()
      // Fill the pipe: every later write(2) to it would block a blocking writer for ever.
      try writeEnd.setNonBlocking()
      var chunk = [UInt8](repeating: 0xee, count: 4096)
      while chunk.withUnsafeMutableBytes({ write(writeEnd.rawValue, $0.baseAddress, $0.count) }) > 0 {}
      try frontend.setVringCall(0, writeEnd)
      // Each completion's interrupt finds the pipe full (EAGAIN: already signalled) and moves on.
      let served = backend.device.chains(0)
      for round in 0..<3 { try echoChains(driver, q, count: 100, seed: 70 + UInt64(round)) }
      #expect(backend.device.chains(0) == served + 300)
      try expectUntouched(driver.memory, from: try driver.allocate(0, alignment: 1))
      withExtendedLifetime(readEnd) {}
    }
    try expectServedPromptly(backend)
    expectBaseline(descriptors: fds, listing: listing, threads: threads)
  }

  @Test("a kick descriptor at end of file stops its ring with VRING_ERR instead of spinning")
  func kickAtEndOfFile() throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 1))
    defer { backend.stop() }
    try expectHealthy(backend)
    #expect(backend.waitIdle())
    let fds = settledDescriptorCount()
    let listing = openDescriptors()
    let threads = threadCount()
    do {
      let connection = try backend.connect()
      defer { connection.close() }
      let frontend = connection.device()
      let driver = try DeviceDriver(frontend: frontend, features: .version1, queueCount: 1, queueSize: 256)
      let q = driver.queues[0]
      try echoChains(driver, q, count: 3, seed: 71)
      let err = try EventFD()
      try frontend.setVringErr(0, err.fd)
      do {
        let (readEnd, writeEnd) = try makePipe()
        try frontend.setVringKick(0, readEnd)
        _ = writeEnd  // closed at the end of this scope: the kick descriptor reads end of file
      }
      #expect(waitUntil(timeout: 2) { err.wait(timeoutMilliseconds: 0) }, "no VRING_ERR for the dead kick descriptor")
      // A spinning worker would burn the better part of a core; a stopped ring costs nothing.
      let cpu = cpuSeconds()
      let wall = Date()
      usleep(300_000)
      let used = cpuSeconds() - cpu
      #expect(used < 0.5 * Date().timeIntervalSince(wall), "the process used \(used) s of CPU in 0.3 s")
      // The ring stopped where it was: GET_VRING_BASE reports the three chains.
      #expect(try frontend.getVringBase(0) == 3)
    }
    try expectServedPromptly(backend)
    expectBaseline(descriptors: fds, listing: listing, threads: threads)
  }

  @Test("kick == call (or err) is refused; empty kicks raise no interrupt")
  func notificationsFollowTheRing() throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 1))
    defer { backend.stop() }
    let connection = try backend.connect()
    defer { connection.close() }
    let frontend = connection.device()
    let driver = try DeviceDriver(frontend: frontend, features: .version1, queueCount: 1, queueSize: 256)
    let q = driver.queues[0]
    // Another descriptor for the same eventfd (dup: a different number) is the same file.
    let dup = try q.kick.fd.duplicate()
    expectRefused("SET_VRING_CALL with the ring's kick descriptor") { try frontend.setVringCall(0, dup) }
    expectRefused("SET_VRING_ERR with the ring's kick descriptor") { try frontend.setVringErr(0, q.kick.fd) }
    expectRefused("SET_VRING_KICK with the ring's call descriptor") { try frontend.setVringKick(0, q.call.fd) }
    // The ring still runs with its own descriptors.
    try echoChains(driver, q, count: 2, seed: 72)
    // A fresh call descriptor: SET_VRING_CALL is applied under the queue's lock, so every
    // interrupt for the chains above went to the old one.
    let call = try EventFD()
    try frontend.setVringCall(0, call.fd)
    // 20 kicks with nothing available: the worker reads each (the kick counter empties) and
    // signals nothing.
    for _ in 0..<20 {
      try q.kick.signal()
      #expect(waitUntil(timeout: 2) { !q.kick.wait(timeoutMilliseconds: 0) }, "the worker did not take the kick")
    }
    _ = try frontend.getVringBase(0)  // the ring's last service is done when this returns
    #expect(call.drain() == 0, "interrupts were raised for kicks that used nothing")
  }

  @Test("a header that stops after 6 bytes times out like a body that stops")
  func partialHeaderTimesOut() throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 1), configuration: .quiet(timeoutMilliseconds: 300))
    defer { backend.stop() }
    let client = try backend.raw()
    try client.channel.sendRaw([1, 0, 0, 0, 1, 0])
    let start = Date()
    #expect(waitUntil(timeout: 3) { backend.server.currentSession == nil })
    #expect(Date().timeIntervalSince(start) < 2, "the half header held the connection")
    try expectServedPromptly(backend)
    withExtendedLifetime(client) {}
  }

  @Test("20 000 refused requests: the session keeps a count and the last few, not all")
  func refusalsAreBounded() throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 1))
    defer { backend.stop() }
    let client = try backend.raw()
    try client.negotiate(owner: false)
    let session = try #require(backend.server.currentSession)
    let rss = residentBytes()
    let n = 20_000
    // SET_VRING_NUM before SET_OWNER, without NEED_REPLY: refused, unanswered.
    let body = Payload.vringState(VringState(index: 0, num: 256)).encoded()
    for _ in 0..<n { try client.send(FrontendRequest.setVringNum.rawValue, flags: 1, body: body) }
    #expect(try client.exchange(.getFeatures, flags: 1).u64 != nil)
    #expect(session.refusalCount == n)
    #expect(session.recentRefusals.count == BackendSession.recentRefusalLimit)
    #expect(session.recentRefusals.last?.contains("SET_OWNER") == true)
    if !underAddressSanitizer {
      #expect(residentBytes() - rss < 8 << 20, "RSS grew by \(residentBytes() - rss) bytes")
    }
  }

  @Test("posted CONFIG_CHANGE on a back-end channel nobody reads: one sender thread, gone with the session")
  func backendChannelFlood() throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 1), configuration: .quiet(timeoutMilliseconds: 300))
    defer { backend.stop() }
    #expect(backend.waitIdle())
    let fds = settledDescriptorCount()
    let listing = openDescriptors()
    let threads = threadCount()
    do {
      let client = try backend.raw()
      try client.negotiate()
      let (ours, theirs) = try UnixSocket.pair()
      #expect(try client.exchange(.setBackendReqFD, fds: [theirs.fd]).u64 == 0)
      let session = try #require(backend.server.currentSession)
      let connected = threadCount()
      for _ in 0..<2000 { session.postConfigChange() }
      #expect(threadCount() <= connected + 1, "threads: \(connected) connected, \(threadCount()) while flooding")
      withExtendedLifetime(ours) {}
    }
    try expectServedPromptly(backend)
    expectBaseline(descriptors: fds, listing: listing, threads: threads)
  }

  @Test("SET_DEVICE_STATE_FD flood on a pipe nobody writes: one transfer at a time, ended by its deadline")
  func deviceStateFlood() throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 1), configuration: .quiet(timeoutMilliseconds: 1500))
    defer { backend.stop() }
    #expect(backend.waitIdle())
    let fds = settledDescriptorCount()
    let listing = openDescriptors()
    let threads = threadCount()
    do {
      let connection = try backend.connect()
      defer { connection.close() }
      let frontend = connection.device()
      _ = try frontend.negotiate()
      try frontend.setOwner()
      let (readEnd, writeEnd) = try makePipe()
      let connected = threadCount()
      _ = try frontend.setDeviceStateFD(direction: .load, fd: try readEnd.duplicate())
      var refused = 0
      for _ in 0..<50 {
        do {
          _ = try frontend.setDeviceStateFD(direction: .load, fd: try readEnd.duplicate())
        } catch FrontendError.refused {
          refused += 1
        }
      }
      #expect(refused == 50, "\(refused) of 50 concurrent transfers refused")
      #expect(threadCount() <= connected + 1, "threads: \(connected) connected, \(threadCount()) during the flood")
      // The transfer nobody feeds fails at its deadline; CHECK_DEVICE_STATE says so.
      expectRefused("CHECK_DEVICE_STATE of a transfer that timed out") { try frontend.checkDeviceState() }
      withExtendedLifetime(writeEnd) {}
    }
    try expectServedPromptly(backend)
    expectBaseline(descriptors: fds, listing: listing, threads: threads)
  }

  @Test("VHOST_VRING_F_LOG with log_guest_addr at the top of the address space: served, nothing traps")
  func logAddressAtTheTop() throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 1))
    defer { backend.stop() }
    let connection = try backend.connect()
    defer { connection.close() }
    let frontend = connection.device()
    let driver = try DeviceDriver(frontend: frontend, features: .version1, queueCount: 1, queueSize: 256)
    let q = driver.queues[0]
    let log = try SharedMemory(anonymous: "betests-top-log", size: 4096)
    try frontend.setLogBase(log)
    _ = try frontend.setFeatures([.version1, .logAll])
    for top in [UInt64.max, UInt64.max - 3, UInt64.max - 0x7ff] {
      try frontend.setVringAddr(
        VringAddress(
          index: 0, flags: VringAddress.flagLog, desc: q.ring.descUserAddr, used: q.ring.usedUserAddr,
          avail: q.ring.availUserAddr, log: top))
      try echoChains(driver, q, count: 3, seed: 74 &+ top)
    }
    #expect(backend.device.chains(0) == 9)
  }
}
