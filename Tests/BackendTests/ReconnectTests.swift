import Foundation
import Testing
import VhostBackend
import VhostFrontend
import VhostProtocol
import VhostSystem
import Virtqueue

extension BackendTests {
  @Test("100 front-ends hang up mid-stream, the 101st is served normally; descriptors and memory do not grow")
  func reconnectAfterHangups() throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: 1))
    defer { backend.stop() }
    let fdsBefore = settledDescriptorCount()
    let listingBefore = openDescriptors()
    let rssBefore = residentBytes()

    for i in 0..<100 {
      let connection = try backend.connect()
      let features: VirtioFeatures = i % 2 == 0 ? .version1 : [.version1, .eventIdx]
      let driver = try DeviceDriver(
        frontend: connection.device(), features: features, queueCount: 1, queueSize: 256, memorySize: 1 << 20)
      let q = driver.queues[0]
      // Some chains are served (sometimes we even see them), more are in flight when the socket goes.
      let first = try submit(driver, q, count: 20, seed: UInt64(1000 + i))
      try q.notifyIfNeeded()
      if i % 3 == 0 { try verify(driver, first, try collectUsed(q, count: 20)) }
      _ = try submit(driver, q, count: 30 + i % 50, seed: UInt64(2000 + i))
      try q.notifyIfNeeded()
      if i % 10 == 5 {
        // Every tenth also leaves a message half sent.
        let half = Array(
          Message(FrontendRequest.setVringNum, payload: .vringState(VringState(index: 0, num: 256))).encoded().prefix(
            15))
        try connection.channel.sendRaw(half)
      }
      connection.close()
    }

    // The 101st front-end: a normal session.
    do {
      let connection = try backend.connect()
      defer { connection.close() }
      let driver = try DeviceDriver(frontend: connection.device(), features: .version1, queueCount: 1, queueSize: 256)
      try echoChains(driver, driver.queues[0], count: 50, seed: 3000)
      try echoChains(driver, driver.queues[0], count: 50, seed: 3001)
      #expect(try driver.stop() == [100])
      #expect(backend.server.connectionsServed == 101)
    }
    #expect(backend.waitIdle())
    #expect(backend.server.connectionsServed == 101)
    expectDescriptorCount(fdsBefore, before: listingBefore)
    let growth = residentBytes() - rssBefore
    if ProcessInfo.processInfo.environment["BETESTS_VERBOSE"] != nil { print("RSS growth: \(growth >> 10) KiB") }
    // Under AddressSanitizer resident size measures its shadow memory and quarantine (freed
    // blocks are kept, up to 256 MiB), not us: only the descriptor check applies there.
    if !underAddressSanitizer {
      #expect(growth < 20 << 20, "resident size grew by \(growth >> 10) KiB over 101 connections")
    }
  }
}
