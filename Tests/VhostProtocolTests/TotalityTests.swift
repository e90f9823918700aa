import Testing
import VhostProtocol

/// A body of the right shape for `layout`, filled with pseudo-random bytes; variable layouts get a plausible
/// size and memory tables a small region count, so a good share of them decode.
private func craftedBody(_ layout: PayloadLayout, _ rng: inout XorShift64) -> [UInt8] {
  switch layout {
  case .config:
    let n = rng.below(Limits.maxConfigSize + 1)
    var w = ByteWriter()
    w.write(UInt32(rng.below(256)))
    // One time in eight the size field lies about the body.
    w.write(UInt32(rng.below(8) == 0 ? rng.below(300) : n))
    w.write(UInt32(rng.below(2)))
    w.write(bytes: rng.bytes(n))
    return w.bytes
  case .u64OrEmpty:
    return rng.below(2) == 0 ? [] : rng.bytes(8)
  case .opaque:
    return rng.bytes(rng.below(300))
  case .memoryTable:
    let count = rng.below(Limits.baselineRegions + 2)  // 0...9; 9 is invalid
    let size = rng.below(2) == 0 ? MemoryTable.size : MemoryTable.size(regions: count)
    var body = rng.bytes(size)
    var w = ByteWriter()
    w.write(UInt32(count))
    body.replaceSubrange(0..<4, with: w.bytes)
    return body
  default:
    return rng.bytes(layout.fixedSize ?? 0)
  }
}

private struct Tally {
  var decoded = 0
  var errored = 0

  mutating func run<T, E: Error>(_ body: () throws(E) -> T) {
    do {
      _ = try body()
      decoded += 1
    } catch {
      // Rendering the error must not trap either.
      _ = String(describing: error)
      errored += 1
    }
  }
}

@Suite("Totality")
struct TotalityTests {
  @Test("20000 pseudo-random and crafted messages never trap the decoders")
  func sweep() {
    var rng = XorShift64(seed: 0x5eed_7e57_c0de_0001)
    var randomHeaders = Tally()
    var randomRequests = Tally()
    var randomReplies = Tally()
    var craftedHeaders = Tally()
    var craftedRequests = Tally()
    var craftedReplies = Tally()

    for iteration in 0..<20_000 {
      let fdCount = rng.below(5)
      if iteration % 2 == 1 {
        // Arbitrary bytes through every entry point.
        let bytes = rng.bytes(rng.below(601))
        if bytes.count >= MessageHeader.size {
          let head = Array(bytes[0..<MessageHeader.size])
          let body = Array(bytes[MessageHeader.size...])
          randomHeaders.run { () throws(ProtocolError) in try MessageHeader.decode(head) }
          if let header = try? MessageHeader.decode(head) {
            randomRequests.run { () throws(ProtocolError) in
              try FrontendMessage.decodeRequest(header: header, body: body, fdCount: fdCount)
            }
          }
        } else {
          randomHeaders.run { () throws(ProtocolError) in try MessageHeader.decode(bytes) }
        }
        // Skip header validation: random code and flags over the random body.
        let flags = HeaderFlags(rawValue: UInt32(truncatingIfNeeded: rng.next()) & 0xf)
        let frontend = FrontendRequest(rawValue: UInt32(rng.below(50)))
        let backend = BackendRequest(rawValue: UInt32(rng.below(14)))
        let header = MessageHeader(request: frontend.rawValue, flags: flags, size: UInt32(bytes.count))
        let backendHeader = MessageHeader(request: backend.rawValue, flags: flags, size: UInt32(bytes.count))
        let replyHeader = MessageHeader(request: frontend.rawValue, flags: [.reply, .version1], size: 0)
        randomRequests.run { () throws(ProtocolError) in
          try FrontendMessage.decodeRequest(header: header, body: bytes, fdCount: fdCount)
        }
        randomRequests.run { () throws(ProtocolError) in
          try BackendMessage.decodeRequest(header: backendHeader, body: bytes, fdCount: fdCount)
        }
        randomReplies.run { () throws(ReplyError) in
          try FrontendMessage.decodeReply(to: frontend, header: header, body: bytes, fdCount: fdCount)
        }
        randomReplies.run { () throws(ReplyError) in
          try FrontendMessage.decodeReply(to: frontend, header: replyHeader, body: bytes, fdCount: fdCount)
        }
        randomReplies.run { () throws(ReplyError) in
          try BackendMessage.decodeReply(to: backend, header: backendHeader, body: bytes, fdCount: fdCount)
        }
      } else {
        // A valid header with a body of the right size for a random known code.
        switch rng.below(4) {
        case 0, 1:
          let code = FrontendRequest.allKnown[rng.below(FrontendRequest.allKnown.count)]
          let flags: HeaderFlags = rng.below(2) == 0 ? .version1 : [.version1, .needReply]
          let body = craftedBody(code.requestLayout, &rng)
          let bytes = MessageHeader(request: code.rawValue, flags: flags, size: UInt32(body.count)).encoded() + body
          craftedHeaders.run { () throws(ProtocolError) in try MessageHeader.decode(Array(bytes[0..<12])) }
          craftedRequests.run { () throws(ProtocolError) in
            try FrontendMessage.decodeRequest(
              header: try MessageHeader.decode(Array(bytes[0..<12])), body: Array(bytes[12...]), fdCount: fdCount)
          }
        case 2:
          let code = BackendRequest.allKnown[rng.below(BackendRequest.allKnown.count)]
          let body = craftedBody(code.requestLayout, &rng)
          let bytes = MessageHeader(request: code.rawValue, flags: .version1, size: UInt32(body.count)).encoded() + body
          craftedHeaders.run { () throws(ProtocolError) in try MessageHeader.decode(Array(bytes[0..<12])) }
          craftedRequests.run { () throws(ProtocolError) in
            try BackendMessage.decodeRequest(
              header: try MessageHeader.decode(Array(bytes[0..<12])), body: Array(bytes[12...]), fdCount: fdCount)
          }
        default:
          let code = FrontendRequest.allKnown[rng.below(FrontendRequest.allKnown.count)]
          let body = craftedBody(code.replyLayout ?? .u64, &rng)
          let bytes =
            MessageHeader(request: code.rawValue, flags: [.reply, .version1], size: UInt32(body.count))
            .encoded() + body
          craftedHeaders.run { () throws(ProtocolError) in try MessageHeader.decode(Array(bytes[0..<12])) }
          guard let header = try? MessageHeader.decode(Array(bytes[0..<12])) else { continue }
          craftedReplies.run { () throws(ReplyError) in
            try FrontendMessage.decodeReply(to: code, header: header, body: Array(bytes[12...]), fdCount: fdCount)
          }
        }
      }
    }

    // Random headers almost never have version 1 and no reserved bits.
    #expect(randomHeaders.errored > 0)
    #expect(randomRequests.decoded > 0)
    #expect(randomRequests.errored > 0)
    #expect(randomReplies.errored > 0)
    // Every crafted header is valid; crafted bodies decode unless the descriptor count or a field is wrong.
    #expect(craftedHeaders.errored == 0)
    #expect(craftedHeaders.decoded == 10_000)
    #expect(craftedRequests.decoded > 0)
    #expect(craftedRequests.errored > 0)
    #expect(craftedReplies.decoded > 0)
    #expect(craftedReplies.errored > 0)
    let craftedTotal =
      craftedRequests.decoded + craftedRequests.errored + craftedReplies.decoded + craftedReplies.errored
    #expect(craftedTotal == 10_000)
  }

  @Test("Payload.decode is total over every layout and body sizes 0...300")
  func everyLayoutEverySize() {
    let layouts: [PayloadLayout] = [
      .empty, .u64, .u64OrEmpty, .vringState, .vringAddress, .memoryTable, .singleRegion, .log, .iotlb, .config,
      .vringArea, .inflight, .sharedObject, .deviceStateTransfer, .shmemMap, .shmemConfig, .opaque,
    ]
    var rng = XorShift64(seed: 42)
    var tally = Tally()
    for layout in layouts {
      for size in 0...300 {
        let body = rng.bytes(size)
        tally.run { () throws(ProtocolError) in try Payload.decode(body, as: layout, request: "X") }
      }
      tally.run { () throws(ProtocolError) in
        try Payload.decode(rng.bytes(ShmemConfig.size), as: layout, request: "X")
      }
    }
    #expect(tally.decoded > 0)
    #expect(tally.errored > 0)
  }
}
