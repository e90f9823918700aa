import Testing
import VhostProtocol

private func headerBytes(request: UInt32 = 1, flags: UInt32, size: UInt32 = 0) -> [UInt8] {
  MessageHeader(request: request, flags: HeaderFlags(rawValue: flags), size: size).encoded()
}

@Suite("Header validation")
struct HeaderValidationTests {
  @Test("Versions other than 1 are refused", arguments: [UInt32(0), 2, 3])
  func badVersion(_ version: UInt32) {
    #expect(throws: ProtocolError.badVersion(version)) { try MessageHeader.decode(headerBytes(flags: version)) }
    #expect(throws: ProtocolError.badVersion(version)) {
      try MessageHeader.decode(headerBytes(flags: version | HeaderFlags.reply.rawValue))
    }
  }

  @Test(
    "Reserved flag bits are refused",
    arguments: [UInt32(0x11), 0x21, 0x101, 0x8000_0001, 0x8000_0005, 0xffff_fff1, 0x8000_000d])
  func reservedFlags(_ flags: UInt32) {
    #expect(throws: ProtocolError.reservedFlags(flags)) { try MessageHeader.decode(headerBytes(flags: flags)) }
  }

  @Test("A reserved bit without the version bit reports the bad version first")
  func reservedWithoutVersion() {
    #expect(throws: ProtocolError.badVersion(0)) { try MessageHeader.decode(headerBytes(flags: 0x10)) }
    #expect(throws: ProtocolError.badVersion(0)) { try MessageHeader.decode(headerBytes(flags: 0x8000_0000)) }
  }

  @Test("Version 1 with REPLY and/or NEED_REPLY is accepted", arguments: [UInt32(0x1), 0x5, 0x9, 0xd])
  func validFlags(_ flags: UInt32) throws {
    let header = try MessageHeader.decode(headerBytes(request: 7, flags: flags, size: 3))
    #expect(header == MessageHeader(request: 7, flags: HeaderFlags(rawValue: flags), size: 3))
    #expect(header.flags.version == 1)
    #expect(header.flags.reservedBits == 0)
  }

  @Test("Body sizes above the limit are refused; the limit itself is accepted")
  func sizeLimit() throws {
    #expect(Limits.maxPayloadSize == 4096)
    #expect(throws: ProtocolError.oversize(size: 4097, limit: 4096)) {
      try MessageHeader.decode(headerBytes(flags: 1, size: 4097))
    }
    #expect(throws: ProtocolError.oversize(size: .max, limit: 4096)) {
      try MessageHeader.decode(headerBytes(flags: 1, size: .max))
    }
    let header = try MessageHeader.decode(headerBytes(flags: 1, size: UInt32(Limits.maxPayloadSize)))
    #expect(header.size == 4096)
    #expect(throws: ProtocolError.oversize(size: 101, limit: 100)) {
      try MessageHeader.decode(headerBytes(flags: 1, size: 101), maxPayload: 100)
    }
    #expect(try MessageHeader.decode(headerBytes(flags: 1, size: 100), maxPayload: 100).size == 100)
  }

  @Test("A header must be exactly 12 bytes")
  func truncated() {
    let full = headerBytes(flags: 1)
    #expect(throws: ProtocolError.truncated(needed: 12, available: 11)) {
      try MessageHeader.decode(Array(full.prefix(11)))
    }
    #expect(throws: ProtocolError.truncated(needed: 12, available: 0)) { try MessageHeader.decode([]) }
    #expect(throws: ProtocolError.self) { try MessageHeader.decode(full + [0]) }
  }

  @Test("Decoded header fields come from their offsets (little-endian host)", .enabled(if: littleEndianHost))
  func fieldOffsets() throws {
    let header = try MessageHeader.decode(hex("2d 01 00 00 | 09 00 00 00 | 00 10 00 00"))
    #expect(header.request == 0x12d)
    #expect(header.flags == [.version1, .needReply])
    #expect(header.size == 0x1000)
  }
}

@Suite("Descriptor rules")
struct FDRuleTests {
  let twoRegions = Sample.memoryTable.payload

  @Test("SET_MEM_TABLE needs one descriptor per region")
  func memTable() throws {
    let bytes = FrontendMessage(.setMemTable, payload: twoRegions).encoded()
    for fds in [0, 1, 3, 8] {
      let error = ProtocolError.wrongFDCount(request: "SET_MEM_TABLE", expected: "2 (one per region)", actual: fds)
      #expect(throws: error) {
        try decodeRequest(bytes, as: FrontendRequest.self, fdCount: fds)
      }
    }
    #expect(try decodeRequest(bytes, as: FrontendRequest.self, fdCount: 2).payload == twoRegions)
    let empty = FrontendMessage(.setMemTable, payload: .memoryTable(MemoryTable(regions: []))).encoded()
    #expect(throws: Never.self) { try decodeRequest(empty, as: FrontendRequest.self, fdCount: 0) }
    #expect(throws: ProtocolError.self) { try decodeRequest(empty, as: FrontendRequest.self, fdCount: 1) }
  }

  @Test("SET_MEM_TABLE with nregions above 8 is an invalid field", .enabled(if: littleEndianHost))
  func tooManyRegions() {
    var body = Array(repeating: UInt8(0), count: 264)
    body[0] = 9
    let header = MessageHeader(request: 5, flags: .version1, size: UInt32(body.count))
    for fds in [0, 8, 9] {
      #expect(throws: ProtocolError.invalidField(request: "SET_MEM_TABLE", field: "nregions", value: 9)) {
        try FrontendMessage.decodeRequest(header: header, body: body, fdCount: fds)
      }
    }
    // Nine regions' worth of body (8 + 9 × 32) is refused the same way.
    let nine = body + Array(repeating: 0, count: 32)
    #expect(throws: ProtocolError.invalidField(request: "SET_MEM_TABLE", field: "nregions", value: 9)) {
      try FrontendMessage.decodeRequest(
        header: MessageHeader(request: 5, flags: .version1, size: UInt32(nine.count)), body: nine, fdCount: 9)
    }
    body[0] = 0xff
    body[3] = 0xff
    #expect(throws: ProtocolError.invalidField(request: "SET_MEM_TABLE", field: "nregions", value: 0xff00_00ff)) {
      try FrontendMessage.decodeRequest(header: header, body: body, fdCount: 0)
    }
  }

  @Test("SET_VRING_KICK/CALL/ERR: one descriptor unless the NOFD bit is set")
  func vringFile() throws {
    for code: FrontendRequest in [.setVringKick, .setVringCall, .setVringErr] {
      #expect(code.requestFDs == .vringFile)
      let withFD = FrontendMessage(code, payload: .u64(3)).encoded()
      let noFD = FrontendMessage(code, payload: .u64(3 | Limits.vringNoFDMask)).encoded()
      #expect(throws: ProtocolError.wrongFDCount(request: code.name, expected: "0 (NOFD bit set)", actual: 1)) {
        try decodeRequest(noFD, as: FrontendRequest.self, fdCount: 1)
      }
      #expect(throws: ProtocolError.wrongFDCount(request: code.name, expected: "1", actual: 0)) {
        try decodeRequest(withFD, as: FrontendRequest.self, fdCount: 0)
      }
      #expect(throws: ProtocolError.self) { try decodeRequest(withFD, as: FrontendRequest.self, fdCount: 2) }
      #expect(try decodeRequest(withFD, as: FrontendRequest.self, fdCount: 1).payload == .u64(3))
      #expect(try decodeRequest(noFD, as: FrontendRequest.self, fdCount: 0).payload == .u64(0x103))
    }
  }

  @Test("ADD_MEM_REG needs exactly one descriptor")
  func addMemReg() throws {
    let bytes = FrontendMessage(.addMemReg, payload: Sample.singleRegion.payload).encoded()
    #expect(throws: ProtocolError.wrongFDCount(request: "ADD_MEM_REG", expected: "1", actual: 0)) {
      try decodeRequest(bytes, as: FrontendRequest.self, fdCount: 0)
    }
    #expect(throws: ProtocolError.self) { try decodeRequest(bytes, as: FrontendRequest.self, fdCount: 2) }
    #expect(throws: Never.self) { try decodeRequest(bytes, as: FrontendRequest.self, fdCount: 1) }
  }

  @Test("Requests without descriptors refuse any")
  func noFDs() throws {
    let bytes = FrontendMessage(.getFeatures).encoded()
    #expect(throws: ProtocolError.wrongFDCount(request: "GET_FEATURES", expected: "0", actual: 1)) {
      try decodeRequest(bytes, as: FrontendRequest.self, fdCount: 1)
    }
    #expect(throws: Never.self) { try decodeRequest(bytes, as: FrontendRequest.self, fdCount: 0) }
    let state = FrontendMessage(.setVringNum, payload: Sample.vringState.payload).encoded()
    #expect(throws: ProtocolError.self) { try decodeRequest(state, as: FrontendRequest.self, fdCount: 1) }
  }

  @Test("REM_MEM_REG tolerates one descriptor (to be closed) but not two")
  func remMemReg() throws {
    #expect(FrontendRequest.remMemReg.requestFDs == .ignored(upTo: 1))
    let bytes = FrontendMessage(.remMemReg, payload: Sample.singleRegion.payload).encoded()
    #expect(throws: Never.self) { try decodeRequest(bytes, as: FrontendRequest.self, fdCount: 0) }
    #expect(throws: Never.self) { try decodeRequest(bytes, as: FrontendRequest.self, fdCount: 1) }
    #expect(throws: ProtocolError.wrongFDCount(request: "REM_MEM_REG", expected: "at most 1", actual: 2)) {
      try decodeRequest(bytes, as: FrontendRequest.self, fdCount: 2)
    }
  }

  @Test("SET_LOG_BASE takes zero or one descriptor; SET_LOG_FD, SET_BACKEND_REQ_FD, SET_INFLIGHT_FD exactly one")
  func otherFDRules() {
    #expect(FrontendRequest.setLogBase.requestFDs == .upTo(1))
    for code: FrontendRequest in [.setLogFD, .setBackendReqFD, .setInflightFD, .addMemReg, .setDeviceStateFD] {
      #expect(code.requestFDs == .exactly(1), "\(code)")
    }
    #expect(FrontendRequest.setMemTable.requestFDs.maximum == 8)
    #expect(FrontendRequest.getInflightFD.replyFDs == .exactly(1))
    #expect(FrontendRequest.postcopyAdvise.replyFDs == .exactly(1))
    #expect(BackendRequest.shmemMap.requestFDs == .exactly(1))
    #expect(BackendRequest.vringHostNotifier.requestFDs == .upTo(1))
    #expect(BackendRequest.shmemUnmap.requestFDs == .none)
  }

  @Test("BACKEND_SHMEM_MAP needs one descriptor; UNMAP none")
  func shmemMap() throws {
    let map = BackendMessage(.shmemMap, payload: Sample.shmemMap.payload).encoded()
    #expect(throws: ProtocolError.self) { try decodeRequest(map, as: BackendRequest.self, fdCount: 0) }
    #expect(throws: Never.self) { try decodeRequest(map, as: BackendRequest.self, fdCount: 1) }
    let unmap = BackendMessage(.shmemUnmap, payload: Sample.shmemMap.payload).encoded()
    #expect(throws: ProtocolError.self) { try decodeRequest(unmap, as: BackendRequest.self, fdCount: 1) }
    #expect(throws: Never.self) { try decodeRequest(unmap, as: BackendRequest.self, fdCount: 0) }
  }
}

@Suite("Reply validation")
struct ReplyValidationTests {
  private func reply(
    to code: FrontendRequest, flags: UInt32 = 0x5, request: UInt32? = nil, body: [UInt8], fds: Int = 0
  ) throws(ReplyError) -> FrontendMessage {
    let header = MessageHeader(
      request: request ?? code.rawValue, flags: HeaderFlags(rawValue: flags), size: UInt32(body.count))
    return try FrontendMessage.decodeReply(to: code, header: header, body: body, fdCount: fds)
  }

  /// Version only, REPLY|NEED_REPLY, REPLY without version, nothing, REPLY with version 2, a reserved bit.
  static let wrongReplyFlags: [UInt32] = [0x1, 0x5 | 0x8, 0x4, 0x0, 0x6, 0x15]

  @Test("Reply flags must be exactly REPLY | version 1", arguments: wrongReplyFlags)
  func badFlags(_ flags: UInt32) {
    #expect(throws: ReplyError.badFlags(flags)) {
      try reply(to: .getFeatures, flags: flags, body: Array(repeating: 0, count: 8))
    }
  }

  @Test("The reply's code must match the request")
  func wrongRequest() {
    #expect(throws: ReplyError.wrongRequest(expected: "GET_FEATURES", got: "GET_PROTOCOL_FEATURES")) {
      try reply(to: .getFeatures, request: 15, body: Array(repeating: 0, count: 8))
    }
    #expect(throws: ReplyError.wrongRequest(expected: "GET_VRING_BASE", got: "UNKNOWN(99)")) {
      try reply(to: .getVringBase, request: 99, body: Array(repeating: 0, count: 8))
    }
  }

  @Test("GET_FEATURES reply must be a u64")
  func shortFeatures() throws {
    #expect(
      throws: ReplyError.malformed(.wrongPayloadSize(request: "GET_FEATURES", expected: "8", actual: 4))
    ) { try reply(to: .getFeatures, body: [0, 0, 0, 0]) }
    #expect(throws: ReplyError.self) { try reply(to: .getFeatures, body: []) }
    #expect(try reply(to: .getFeatures, body: hex("00 00 00 40 01 00 00 00")).payload.u64Value != nil)
  }

  @Test("GET_FEATURES reply decodes the feature word (little-endian host)", .enabled(if: littleEndianHost))
  func featuresValue() throws {
    #expect(try reply(to: .getFeatures, body: hex("00 00 00 40 01 00 00 00")).payload == .u64(0x1_4000_0000))
  }

  @Test("SET_LOG_BASE reply may be empty or a u64")
  func logBaseReply() throws {
    #expect(try reply(to: .setLogBase, body: []).payload == .empty)
    #expect(try reply(to: .setLogBase, body: Array(repeating: 0, count: 8)).payload == .u64(0))
    #expect(throws: ReplyError.malformed(.wrongPayloadSize(request: "SET_LOG_BASE", expected: "0 or 8", actual: 4))) {
      try reply(to: .setLogBase, body: [0, 0, 0, 0])
    }
  }

  @Test("A request without an explicit reply accepts a REPLY_ACK u64 and no descriptors")
  func replyAck() throws {
    #expect(FrontendRequest.setMemTable.replyLayout == nil)
    let ack = try reply(to: .setMemTable, body: Array(repeating: 0, count: 8))
    #expect(ack.payload == .u64(0))
    #expect(ack.isReply)
    let nack = try reply(to: .setMemTable, body: [1, 0, 0, 0, 0, 0, 0, 0])
    #expect(nack.payload.u64Value != 0)
    #expect(throws: ReplyError.self) { try reply(to: .setMemTable, body: []) }
    #expect(throws: ReplyError.malformed(.wrongFDCount(request: "SET_MEM_TABLE", expected: "0", actual: 1))) {
      try reply(to: .setMemTable, body: Array(repeating: 0, count: 8), fds: 1)
    }
  }

  @Test("GET_INFLIGHT_FD reply must carry one descriptor")
  func inflightReply() throws {
    let body = Sample.inflight.payload.encoded()
    #expect(throws: ReplyError.malformed(.wrongFDCount(request: "GET_INFLIGHT_FD", expected: "1", actual: 0))) {
      try reply(to: .getInflightFD, body: body)
    }
    #expect(throws: ReplyError.self) { try reply(to: .getInflightFD, body: body, fds: 2) }
    #expect(try reply(to: .getInflightFD, body: body, fds: 1).payload == Sample.inflight.payload)
  }

  @Test("GET_CONFIG reply's size field must match its body")
  func configReply() throws {
    var w = ByteWriter()
    w.write(UInt32(0))
    w.write(UInt32(8))
    w.write(UInt32(0))
    w.write(bytes: [1, 2, 3, 4])
    let error = #expect(throws: ReplyError.self) { try reply(to: .getConfig, body: w.bytes) }
    guard case .malformed(.wrongPayloadSize) = error else {
      Issue.record("expected malformed(wrongPayloadSize), got \(String(describing: error))")
      return
    }
    #expect(throws: ReplyError.self) { try reply(to: .getConfig, body: Array(repeating: 0, count: 11)) }
    let good = Sample.config.payload.encoded()
    #expect(try reply(to: .getConfig, body: good).payload == Sample.config.payload)
  }

  @Test("GET_SHARED_OBJECT and SET_DEVICE_STATE_FD replies may carry zero or one descriptor")
  func optionalReplyFD() throws {
    for code: FrontendRequest in [.getSharedObject, .setDeviceStateFD] {
      for fds in [0, 1] {
        #expect(throws: Never.self) { try reply(to: code, body: Array(repeating: 0, count: 8), fds: fds) }
      }
      #expect(throws: ReplyError.self) { try reply(to: code, body: Array(repeating: 0, count: 8), fds: 2) }
    }
  }

  @Test("GET_VRING_BASE reply is a vring state")
  func vringBaseReply() throws {
    let body = Sample.vringState.payload.encoded()
    #expect(try reply(to: .getVringBase, body: body).payload == Sample.vringState.payload)
    #expect(throws: ReplyError.self) { try reply(to: .getVringBase, body: Array(repeating: 0, count: 4)) }
  }

  @Test("Back-end channel: SHARED_OBJECT_LOOKUP reply is a u64 with an optional descriptor")
  func backendReply() throws {
    let header = MessageHeader(request: 8, flags: [.reply, .version1], size: 8)
    let body: [UInt8] = Array(repeating: 0, count: 8)
    for fds in [0, 1] {
      let message = try BackendMessage.decodeReply(to: .sharedObjectLookup, header: header, body: body, fdCount: fds)
      #expect(message.payload == .u64(0))
    }
    #expect(throws: ReplyError.self) {
      try BackendMessage.decodeReply(to: .sharedObjectLookup, header: header, body: body, fdCount: 2)
    }
    #expect(throws: ReplyError.badFlags(0x1)) {
      try BackendMessage.decodeReply(
        to: .sharedObjectLookup, header: MessageHeader(request: 8, flags: .version1, size: 8), body: body, fdCount: 0)
    }
  }

  @Test("Error descriptions name the problem")
  func descriptions() {
    #expect(ReplyError.badFlags(0x1).description.contains("0x1"))
    #expect(ReplyError.wrongRequest(expected: "A", got: "B").description.contains("B"))
    #expect(ProtocolError.oversize(size: 4097, limit: 4096).description.contains("4097"))
    #expect(ProtocolError.wrongFDCount(request: "X", expected: "1", actual: 0).description.contains("X"))
  }
}
