import Testing
import VhostProtocol

@Suite("Payload sizes")
struct PayloadSizeTests {
  @Test("Every layout reports its wire size")
  func layoutFixedSizes() {
    let expected: [(PayloadLayout, Int?)] = [
      (.empty, 0), (.u64, 8), (.u64OrEmpty, nil), (.vringState, 8), (.vringAddress, 40), (.memoryTable, nil),
      (.singleRegion, 40), (.log, 16), (.iotlb, 32), (.config, nil), (.vringArea, 24), (.inflight, 24),
      (.sharedObject, 16), (.deviceStateTransfer, 8), (.shmemMap, 40), (.shmemConfig, 2056), (.opaque, nil),
    ]
    for (layout, size) in expected {
      #expect(layout.fixedSize == size, "\(layout)")
    }
  }

  @Test("Every payload type's static size matches the spec")
  func staticSizes() {
    #expect(MessageHeader.size == 12)
    #expect(VringState.size == 8)
    #expect(VringAddress.size == 40)
    #expect(MemoryRegion.size == 32)
    #expect(MemoryTable.size == 264)
    for n in 0...8 { #expect(MemoryTable.size(regions: n) == 8 + 32 * n) }
    #expect(SingleMemoryRegion.size == 40)
    #expect(LogDescription.size == 16)
    #expect(IOTLBMessage.size == 32)
    #expect(ConfigSpace.headerSize == 12)
    #expect(VringArea.size == 24)
    #expect(InflightDescription.size == 24)
    #expect(SharedObject.size == 16)
    #expect(DeviceStateTransfer.size == 8)
    #expect(ShmemMapRequest.size == 40)
    #expect(ShmemConfig.size == 2056)
  }

  @Test("Every payload type encodes to exactly its size")
  func encodedSizes() {
    let region = MemoryRegion(guestPhysAddr: 1, memorySize: 2, userAddr: 3, mmapOffset: 4)
    let cases: [(String, Payload, Int)] = [
      ("empty", .empty, 0),
      ("u64", .u64(.max), 8),
      ("VringState", .vringState(VringState(index: .max, num: .max)), 8),
      ("VringAddress", .vringAddress(VringAddress(index: 0, desc: 1, used: 2, avail: 3)), 40),
      ("MemoryTable(0)", .memoryTable(MemoryTable(regions: [])), 8),
      ("MemoryTable(1)", .memoryTable(MemoryTable(regions: [region])), 40),
      ("MemoryTable(8)", .memoryTable(MemoryTable(regions: Array(repeating: region, count: 8))), 264),
      ("SingleMemoryRegion", .singleRegion(SingleMemoryRegion(region)), 40),
      ("LogDescription", .log(LogDescription(mmapSize: 1, mmapOffset: 2)), 16),
      ("IOTLBMessage", .iotlb(IOTLBMessage(iova: 1, size: 2, userAddr: 3, permissions: 3, type: .miss)), 32),
      ("VringArea", .vringArea(VringArea(indexAndFlags: 0, size: 0, offset: 0)), 24),
      (
        "InflightDescription",
        .inflight(InflightDescription(mmapSize: 0, mmapOffset: 0, numQueues: 1, queueSize: 1)), 24
      ),
      ("SharedObject", .sharedObject(SharedObject(uuid: [])), 16),
      ("DeviceStateTransfer", .deviceStateTransfer(DeviceStateTransfer(direction: .save)), 8),
      ("ShmemMapRequest", .shmemMap(ShmemMapRequest(shmid: 0, fdOffset: 0, shmOffset: 0, length: 0, flags: 0)), 40),
      ("ShmemConfig(0)", .shmemConfig(ShmemConfig(nregions: 0, memorySizes: [])), 2056),
      ("ShmemConfig(300)", .shmemConfig(ShmemConfig(nregions: 1, memorySizes: Array(repeating: 1, count: 300))), 2056),
      ("opaque", .opaque([1, 2, 3]), 3),
    ]
    for (name, payload, size) in cases {
      #expect(payload.encoded().count == size, "\(name)")
    }
    #expect(MessageHeader(request: 1, flags: .version1, size: 0).encoded().count == 12)
  }

  @Test("ConfigSpace is 12 + n bytes for n up to 256", arguments: [0, 1, 4, 60, 255, 256])
  func configSize(_ n: Int) throws {
    let config = ConfigSpace(offset: 0, bytes: Array(repeating: 0xab, count: n))
    let body = Payload.config(config).encoded()
    #expect(body.count == 12 + n)
    #expect(try Payload.decode(body, as: .config, request: "GET_CONFIG") == .config(config))
  }

  @Test("ConfigSpace larger than 256 bytes is refused on decode")
  func configTooLarge() {
    let body = Payload.config(ConfigSpace(offset: 0, bytes: Array(repeating: 0, count: 257))).encoded()
    #expect(body.count == 269)
    #expect(throws: ProtocolError.self) { try Payload.decode(body, as: .config, request: "SET_CONFIG") }
  }

  @Test("Fixed layouts refuse a body one byte short or long")
  func fixedSizesEnforced() throws {
    let layouts: [PayloadLayout] = [
      .u64, .vringState, .vringAddress, .singleRegion, .log, .iotlb, .vringArea, .inflight,
      .sharedObject, .deviceStateTransfer, .shmemMap, .shmemConfig,
    ]
    for layout in layouts {
      let size = try #require(layout.fixedSize)
      for wrong in [size - 1, size + 1] {
        #expect(throws: ProtocolError.wrongPayloadSize(request: "X", expected: "\(size)", actual: wrong)) {
          try Payload.decode(Array(repeating: 0, count: wrong), as: layout, request: "X")
        }
      }
      #expect(throws: Never.self) { try Payload.decode(Array(repeating: 0, count: size), as: layout, request: "X") }
    }
    #expect(throws: ProtocolError.self) { try Payload.decode([0], as: .empty, request: "X") }
    #expect(throws: ProtocolError.wrongPayloadSize(request: "X", expected: "0 or 8", actual: 4)) {
      try Payload.decode([0, 0, 0, 0], as: .u64OrEmpty, request: "X")
    }
  }

  @Test("A memory table body is 8 + 32 × nregions bytes, or the full 264")
  func memoryTableSizes() throws {
    let two = Sample.memoryTable.payload.encoded()
    #expect(two.count == 72)
    #expect(try Payload.decode(two, as: .memoryTable, request: "SET_MEM_TABLE") == Sample.memoryTable.payload)
    let padded = two + Array(repeating: 0, count: 264 - 72)
    #expect(try Payload.decode(padded, as: .memoryTable, request: "SET_MEM_TABLE") == Sample.memoryTable.payload)
    for wrong in [0, 4, 7, 8, 40, 71, 73, 104, 263, 265] {
      let body = Array((two + Array(repeating: 0, count: 300)).prefix(wrong))
      #expect(throws: ProtocolError.self, "\(wrong) bytes") {
        try Payload.decode(body, as: .memoryTable, request: "SET_MEM_TABLE")
      }
    }
  }
}
