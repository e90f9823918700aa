import Foundation
import Testing
import VhostBackend
import VhostFrontend
import VhostProtocol
import VhostSystem
import Virtqueue

/// Ring features of one data-path run.
struct RingFeatures: Sendable, CustomTestStringConvertible {
  var eventIdx: Bool
  var indirect: Bool
  var testDescription: String { "EVENT_IDX \(eventIdx ? "on" : "off"), INDIRECT_DESC \(indirect ? "on" : "off")" }

  static let all: [RingFeatures] = [
    .init(eventIdx: false, indirect: false), .init(eventIdx: true, indirect: false),
    .init(eventIdx: false, indirect: true), .init(eventIdx: true, indirect: true),
  ]

  var virtio: VirtioFeatures {
    var f: VirtioFeatures = .version1
    if eventIdx { f.insert(.eventIdx) }
    if indirect { f.insert(.indirectDesc) }
    return f
  }
}

extension BackendTests {
  /// What a submitted chain must come back with.
  struct Expected {
    var input: [UInt8]
    var writableOffset: UInt64
    var indirect: Bool
  }

  @Test(
    "our front-end drives our back-end: 1100 chains per queue through rings of 256, echo checked (4 queues: burst path)",
    arguments: RingFeatures.all, [1, 4])
  func loopbackDataPath(features: RingFeatures, queues: Int) throws {
    let backend = try LoopbackBackend(device: EchoDevice(queues: queues, bursts: queues > 1))
    defer { backend.stop() }
    let connection = try backend.connect()
    defer { connection.close() }
    let frontend = connection.device()
    let driver = try DeviceDriver(frontend: frontend, features: features.virtio, queueCount: queues, queueSize: 256)
    #expect(driver.ackedFeatures == features.virtio.union(.protocolFeatures))
    #expect(backend.device.acked == driver.ackedFeatures)
    #expect(frontend.state.maxQueues == UInt64(queues))

    let chainsPerQueue = 1100
    let batch = 100  // ≤ 200 descriptors in flight of 256
    let writableLength = 256
    let mem = driver.memory.memory
    // One slot per chain of a batch: readable buffer, writable buffer, indirect table (3 entries).
    struct Slot {
      var readable: UInt64
      var writable: UInt64
      var table: UInt64
    }
    var slots: [[Slot]] = []
    for _ in 0..<queues {
      var s: [Slot] = []
      for _ in 0..<batch {
        s.append(
          Slot(
            readable: try driver.allocate(256), writable: try driver.allocate(writableLength),
            table: try driver.allocate(48, alignment: 16)))
      }
      slots.append(s)
    }

    var submitted = 0
    var indirectChains = 0
    while submitted < chainsPerQueue {
      let n = min(batch, chainsPerQueue - submitted)
      // With INDIRECT_DESC, half the chains are one INDIRECT descriptor whose flags are patched in
      // after SplitDriverQueue.add wrote it; the rings are disabled meanwhile so the back-end cannot
      // fetch a half-written chain (SET_VRING_ENABLE takes the queue's lock, which the worker holds
      // while it processes the ring).
      if features.indirect {
        for q in driver.queues { try frontend.setVringEnable(q.index, false) }
      }
      var expected: [[UInt16: Expected]] = Array(repeating: [:], count: queues)
      for (qi, q) in driver.queues.enumerated() {
        for k in 0..<n {
          let serial = submitted + k
          let slot = slots[qi][k]
          let input = pattern(seed: UInt64(qi + 1), serial, count: 1 + serial % 256)
          try mem.write(input, at: slot.readable)
          try mem.fill(0, at: slot.writable, count: writableLength)
          let useIndirect = features.indirect && k % 2 == 1
          let head: UInt16
          if useIndirect {
            // Table: the readable bytes in two pieces (when there are two), then the writable buffer.
            let first = UInt32(max(1, input.count / 2))
            var entries: [(UInt64, UInt32, UInt16)] = [
              (driver.memory.gpa(slot.readable), first, SplitDescriptorFlags.next)
            ]
            if Int(first) < input.count {
              entries.append(
                (
                  driver.memory.gpa(slot.readable + UInt64(first)), UInt32(input.count) - first,
                  SplitDescriptorFlags.next
                ))
            }
            entries.append((driver.memory.gpa(slot.writable), UInt32(writableLength), SplitDescriptorFlags.write))
            for (i, e) in entries.enumerated() {
              try writeDescriptor(
                mem, at: slot.table + UInt64(i) * 16, address: e.0, length: e.1, flags: e.2,
                next: i + 1 < entries.count ? UInt16(i + 1) : 0)
            }
            head = try q.ring.add([
              DriverBuffer(
                guestAddress: driver.memory.gpa(slot.table), length: UInt32(entries.count * 16), deviceWritable: false)
            ])
            try mem.store(SplitDescriptorFlags.indirect, at: q.ring.descOffset + UInt64(head) * 16 + 12)
            indirectChains += 1
          } else {
            head = try q.ring.add([
              DriverBuffer(
                guestAddress: driver.memory.gpa(slot.readable), length: UInt32(input.count), deviceWritable: false),
              DriverBuffer(
                guestAddress: driver.memory.gpa(slot.writable), length: UInt32(writableLength), deviceWritable: true),
            ])
          }
          #expect(expected[qi][head] == nil)
          expected[qi][head] = Expected(input: input, writableOffset: slot.writable, indirect: useIndirect)
        }
      }
      if features.indirect {
        for q in driver.queues { try frontend.setVringEnable(q.index, true) }
      }
      for q in driver.queues { try q.notifyIfNeeded() }
      for (qi, q) in driver.queues.enumerated() {
        let used = try collectUsed(q, count: n)
        #expect(used.count == n, "queue \(qi): \(used.count) completions for \(n) chains")
        for u in used {
          guard let e = expected[qi].removeValue(forKey: u.head) else {
            Issue.record("queue \(qi): completion for head \(u.head), which is not outstanding")
            continue
          }
          #expect(u.length == UInt32(e.input.count), "queue \(qi) head \(u.head) (indirect: \(e.indirect))")
          let out = try mem.read(at: e.writableOffset, count: e.input.count)
          #expect(out == xor5a(e.input), "queue \(qi) head \(u.head) (indirect: \(e.indirect)): wrong echo")
          let rest = try mem.read(at: e.writableOffset + UInt64(e.input.count), count: writableLength - e.input.count)
          #expect(rest.allSatisfy { $0 == 0 }, "queue \(qi): the device wrote past the used length")
        }
        #expect(expected[qi].isEmpty)
      }
      submitted += n
    }
    if features.indirect { #expect(indirectChains == queues * chainsPerQueue / 2) }
    // The counters move just after the used index does.
    let session = try #require(backend.server.currentSession)
    for qi in 0..<queues {
      #expect(waitUntil { backend.device.chains(qi) == chainsPerQueue }, "queue \(qi): \(backend.device.chains(qi))")
      #expect(waitUntil { session.queues[qi].chainsCompleted == chainsPerQueue })
      #expect(session.queues[qi].chainErrors == 0)
    }
    // Where each ring stopped: the number of chains fetched.
    #expect(try driver.stop() == Array(repeating: UInt32(chainsPerQueue), count: queues))
  }
}
