import Testing
import VhostProtocol

/// One message kind: its code, its hand-written header and the sample body it carries.
struct GoldenCase: Sendable, CustomStringConvertible {
  let code: UInt32
  let header: String
  let sample: Sample

  var description: String { "\(code)" }
}

/// Every front-end request 1–45 with the header a version-1 request carrying `sample` must have.
let frontendGolden: [GoldenCase] = [
  GoldenCase(code: 1, header: "01 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 2, header: "02 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .u64),
  GoldenCase(code: 3, header: "03 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 4, header: "04 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 5, header: "05 00 00 00 | 01 00 00 00 | 48 00 00 00", sample: .memoryTable),
  GoldenCase(code: 6, header: "06 00 00 00 | 01 00 00 00 | 10 00 00 00", sample: .log),
  GoldenCase(code: 7, header: "07 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 8, header: "08 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .vringState),
  GoldenCase(code: 9, header: "09 00 00 00 | 01 00 00 00 | 28 00 00 00", sample: .vringAddress),
  GoldenCase(code: 10, header: "0a 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .vringState),
  GoldenCase(code: 11, header: "0b 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .vringState),
  GoldenCase(code: 12, header: "0c 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .u64),
  GoldenCase(code: 13, header: "0d 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .u64),
  GoldenCase(code: 14, header: "0e 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .u64),
  GoldenCase(code: 15, header: "0f 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 16, header: "10 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .u64),
  GoldenCase(code: 17, header: "11 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 18, header: "12 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .vringState),
  GoldenCase(code: 19, header: "13 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .u64),
  GoldenCase(code: 20, header: "14 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .u64),
  GoldenCase(code: 21, header: "15 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 22, header: "16 00 00 00 | 01 00 00 00 | 20 00 00 00", sample: .iotlb),
  GoldenCase(code: 23, header: "17 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .vringState),
  GoldenCase(code: 24, header: "18 00 00 00 | 01 00 00 00 | 10 00 00 00", sample: .config),
  GoldenCase(code: 25, header: "19 00 00 00 | 01 00 00 00 | 10 00 00 00", sample: .config),
  GoldenCase(code: 26, header: "1a 00 00 00 | 01 00 00 00 | 04 00 00 00", sample: .opaque),
  GoldenCase(code: 27, header: "1b 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .u64),
  GoldenCase(code: 28, header: "1c 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 29, header: "1d 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 30, header: "1e 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 31, header: "1f 00 00 00 | 01 00 00 00 | 18 00 00 00", sample: .inflight),
  GoldenCase(code: 32, header: "20 00 00 00 | 01 00 00 00 | 18 00 00 00", sample: .inflight),
  GoldenCase(code: 33, header: "21 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 34, header: "22 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 35, header: "23 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .vringState),
  GoldenCase(code: 36, header: "24 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 37, header: "25 00 00 00 | 01 00 00 00 | 28 00 00 00", sample: .singleRegion),
  GoldenCase(code: 38, header: "26 00 00 00 | 01 00 00 00 | 28 00 00 00", sample: .singleRegion),
  GoldenCase(code: 39, header: "27 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .u64),
  GoldenCase(code: 40, header: "28 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 41, header: "29 00 00 00 | 01 00 00 00 | 10 00 00 00", sample: .sharedObject),
  GoldenCase(code: 42, header: "2a 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .deviceStateTransfer),
  GoldenCase(code: 43, header: "2b 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 44, header: "2c 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 45, header: "2d 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .vringState),
]

/// Every back-end request 1–10.
let backendGolden: [GoldenCase] = [
  GoldenCase(code: 1, header: "01 00 00 00 | 01 00 00 00 | 20 00 00 00", sample: .iotlb),
  GoldenCase(code: 2, header: "02 00 00 00 | 01 00 00 00 | 00 00 00 00", sample: .empty),
  GoldenCase(code: 3, header: "03 00 00 00 | 01 00 00 00 | 18 00 00 00", sample: .vringArea),
  GoldenCase(code: 4, header: "04 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .vringState),
  GoldenCase(code: 5, header: "05 00 00 00 | 01 00 00 00 | 08 00 00 00", sample: .vringState),
  GoldenCase(code: 6, header: "06 00 00 00 | 01 00 00 00 | 10 00 00 00", sample: .sharedObject),
  GoldenCase(code: 7, header: "07 00 00 00 | 01 00 00 00 | 10 00 00 00", sample: .sharedObject),
  GoldenCase(code: 8, header: "08 00 00 00 | 01 00 00 00 | 10 00 00 00", sample: .sharedObject),
  GoldenCase(code: 9, header: "09 00 00 00 | 01 00 00 00 | 28 00 00 00", sample: .shmemMap),
  GoldenCase(code: 10, header: "0a 00 00 00 | 01 00 00 00 | 28 00 00 00", sample: .shmemMap),
]

@Suite("Golden bytes", .enabled(if: littleEndianHost, "golden bytes are written little-endian"))
struct GoldenBytesTests {
  @Test("The golden tables cover every known request code exactly once")
  func tablesCoverAllCodes() {
    #expect(frontendGolden.map(\.code) == FrontendRequest.allKnown.map(\.rawValue))
    #expect(frontendGolden.map(\.code) == Array(1...45))
    #expect(backendGolden.map(\.code) == BackendRequest.allKnown.map(\.rawValue))
    #expect(backendGolden.map(\.code) == Array(1...10))
  }

  @Test("Front-end request encodes to its hand-written bytes", arguments: frontendGolden)
  func frontendRequest(_ golden: GoldenCase) {
    let code = FrontendRequest(rawValue: golden.code)
    #expect(code.requestLayout == golden.sample.layout)
    let bytes = FrontendMessage(code, payload: golden.sample.payload).encoded()
    #expect(bytes == hex(golden.header + " | " + golden.sample.hex))
  }

  @Test("Back-end request encodes to its hand-written bytes", arguments: backendGolden)
  func backendRequest(_ golden: GoldenCase) {
    let code = BackendRequest(rawValue: golden.code)
    #expect(code.requestLayout == golden.sample.layout)
    let bytes = BackendMessage(code, payload: golden.sample.payload).encoded()
    #expect(bytes == hex(golden.header + " | " + golden.sample.hex))
  }

  @Test("GET_FEATURES is a bare 12-byte header")
  func getFeatures() {
    #expect(FrontendMessage(.getFeatures).encoded() == hex("01 00 00 00 01 00 00 00 00 00 00 00"))
  }

  @Test("SET_FEATURES carries the feature word as a u64")
  func setFeatures() {
    let features: VirtioFeatures = [.version1, .protocolFeatures, .eventIdx]
    #expect(features.rawValue == 0x1_6000_0000)
    let bytes = FrontendMessage(.setFeatures, payload: .u64(features.rawValue)).encoded()
    #expect(bytes == hex("02 00 00 00 | 01 00 00 00 | 08 00 00 00 | 00 00 00 60 01 00 00 00"))
  }

  @Test("SET_MEM_TABLE with two regions: count, padding, fields at their offsets, 8 + 2 × 32 bytes")
  func setMemTable() throws {
    let bytes = FrontendMessage(.setMemTable, payload: Sample.memoryTable.payload).encoded()
    #expect(bytes.count == 12 + 8 + 2 * 32)
    #expect(Array(bytes[0..<12]) == hex("05 00 00 00 | 01 00 00 00 | 48 00 00 00"))
    #expect(Array(bytes[12..<16]) == hex("02 00 00 00"), "nregions")
    #expect(Array(bytes[16..<20]) == hex("00 00 00 00"), "padding")
    // Region 0 at body offset 8.
    #expect(Array(bytes[20..<28]) == hex("00 00 00 00 00 00 00 00"), "region 0 guest_phys_addr")
    #expect(Array(bytes[28..<36]) == hex("00 00 00 40 00 00 00 00"), "region 0 memory_size")
    #expect(Array(bytes[36..<44]) == hex("00 00 00 34 12 7f 00 00"), "region 0 userspace_addr")
    #expect(Array(bytes[44..<52]) == hex("00 00 00 00 00 00 00 00"), "region 0 mmap_offset")
    // Region 1 at body offset 40.
    #expect(Array(bytes[52..<60]) == hex("00 00 00 00 01 00 00 00"), "region 1 guest_phys_addr")
    #expect(Array(bytes[60..<68]) == hex("00 00 00 80 00 00 00 00"), "region 1 memory_size")
    #expect(Array(bytes[68..<76]) == hex("00 00 00 74 12 7f 00 00"), "region 1 userspace_addr")
    #expect(Array(bytes[76..<84]) == hex("00 00 00 40 00 00 00 00"), "region 1 mmap_offset")
    #expect(bytes == hex("05 00 00 00 | 01 00 00 00 | 48 00 00 00 | " + Sample.memoryTable.hex))

    // The C struct's full size (8 regions, unused slots zero-filled to 264 bytes) decodes to the same table.
    let padded = hex("05 00 00 00 | 01 00 00 00 | 08 01 00 00 | " + Sample.memoryTable.hex + " | " + zeros(6 * 32))
    #expect(padded.count == 12 + 264)
    #expect(try decodeRequest(padded, as: FrontendRequest.self, fdCount: 2).payload == Sample.memoryTable.payload)
  }

  @Test("SET_MEM_TABLE with no regions is count and padding only; eight regions fill 264 bytes")
  func memTableExtremes() {
    let empty = FrontendMessage(.setMemTable, payload: .memoryTable(MemoryTable(regions: []))).encoded()
    #expect(empty == hex("05 00 00 00 | 01 00 00 00 | 08 00 00 00 | 00 00 00 00 | 00 00 00 00"))
    let full = FrontendMessage(
      .setMemTable, payload: .memoryTable(MemoryTable(regions: Array(repeating: Sample.region1, count: 8)))
    ).encoded()
    #expect(
      full
        == hex(
          "05 00 00 00 | 01 00 00 00 | 08 01 00 00 | 08 00 00 00 | 00 00 00 00 | "
            + Array(repeating: Sample.region1Hex, count: 8).joined(separator: " ")))
  }

  @Test("SET_VRING_ADDR: index, flags, desc, used, avail, log at their offsets")
  func setVringAddr() {
    let address = VringAddress(
      index: 1, flags: 0, desc: 0x1111_2222_3333_4444, used: 0x5555_6666_7777_8888, avail: 0x99aa_bbcc_ddee_ff00,
      log: 0x0102_0304_0506_0708)
    let bytes = FrontendMessage(.setVringAddr, payload: .vringAddress(address)).encoded()
    #expect(
      bytes
        == hex(
          """
          09 00 00 00 | 01 00 00 00 | 28 00 00 00
          01 00 00 00 | 00 00 00 00
          44 44 33 33 22 22 11 11 | 88 88 77 77 66 66 55 55 | 00 ff ee dd cc bb aa 99 | 08 07 06 05 04 03 02 01
          """))
    #expect(
      FrontendMessage(.setVringAddr, payload: Sample.vringAddress.payload).encoded()
        == hex("09 00 00 00 | 01 00 00 00 | 28 00 00 00 | " + Sample.vringAddress.hex))
  }

  @Test("ADD_MEM_REG: u64 padding then one region")
  func addMemReg() {
    let region = MemoryRegion(
      guestPhysAddr: 0xc000_0000, memorySize: 0x1000_0000, userAddr: 0x7fab_c000_0000, mmapOffset: 0x2000)
    let bytes = FrontendMessage(.addMemReg, payload: .singleRegion(SingleMemoryRegion(region))).encoded()
    #expect(
      bytes
        == hex(
          """
          25 00 00 00 | 01 00 00 00 | 28 00 00 00
          00 00 00 00 00 00 00 00
          00 00 00 c0 00 00 00 00 | 00 00 00 10 00 00 00 00 | 00 00 00 c0 ab 7f 00 00 | 00 20 00 00 00 00 00 00
          """))
  }

  @Test("SET_LOG_BASE: mmap size and offset")
  func setLogBase() {
    let bytes = FrontendMessage(.setLogBase, payload: .log(LogDescription(mmapSize: 0x8_0000, mmapOffset: 0)))
      .encoded()
    #expect(bytes == hex("06 00 00 00 | 01 00 00 00 | 10 00 00 00 | 00 00 08 00 00 00 00 00 | " + zeros(8)))
  }

  @Test("IOTLB_MSG: 26 bytes of fields padded to 32")
  func iotlbMsg() {
    let invalidate = IOTLBMessage(iova: 0x10_0000, size: 0x1000, userAddr: 0, permissions: 0, type: .invalidate)
    let bytes = FrontendMessage(.iotlbMsg, payload: .iotlb(invalidate)).encoded()
    #expect(
      bytes
        == hex(
          """
          16 00 00 00 | 01 00 00 00 | 20 00 00 00
          00 00 10 00 00 00 00 00 | 00 10 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00
          00 | 03 | 00 00 00 00 00 00
          """))
    #expect(
      FrontendMessage(.iotlbMsg, payload: Sample.iotlb.payload).encoded()
        == hex("16 00 00 00 | 01 00 00 00 | 20 00 00 00 | " + Sample.iotlb.hex))
  }

  @Test("GET_CONFIG: offset, size, flags, then size bytes")
  func getConfig() {
    let config = ConfigSpace(offset: 0, flags: 0, bytes: Array(repeating: 0, count: 60))
    let bytes = FrontendMessage(.getConfig, payload: .config(config)).encoded()
    #expect(bytes.count == 12 + 12 + 60)
    let expected = "18 00 00 00 | 01 00 00 00 | 48 00 00 00 | 00 00 00 00 | 3c 00 00 00 | 00 00 00 00 | " + zeros(60)
    #expect(bytes == hex(expected))
  }

  @Test("SET_INFLIGHT_FD: 20 bytes of fields with 4 bytes of tail padding")
  func setInflightFD() {
    let inflight = InflightDescription(mmapSize: 0x2100, mmapOffset: 0, numQueues: 4, queueSize: 256)
    let bytes = FrontendMessage(.setInflightFD, payload: .inflight(inflight)).encoded()
    #expect(
      bytes
        == hex(
          """
          20 00 00 00 | 01 00 00 00 | 18 00 00 00
          00 21 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 | 04 00 | 00 01 | 00 00 00 00
          """))
  }

  @Test("SET_DEVICE_STATE_FD: direction and phase")
  func setDeviceStateFD() {
    let save = FrontendMessage(.setDeviceStateFD, payload: .deviceStateTransfer(DeviceStateTransfer(direction: .save)))
    #expect(save.encoded() == hex("2a 00 00 00 | 01 00 00 00 | 08 00 00 00 | 00 00 00 00 | 00 00 00 00"))
    let load = FrontendMessage(
      .setDeviceStateFD, payload: .deviceStateTransfer(DeviceStateTransfer(direction: .load, phase: 0)))
    #expect(load.encoded() == hex("2a 00 00 00 | 01 00 00 00 | 08 00 00 00 | 01 00 00 00 | 00 00 00 00"))
  }

  @Test("GET_SHARED_OBJECT: the UUID's 16 bytes verbatim")
  func getSharedObject() {
    let uuid: [UInt8] = [
      0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x0f, 0xed, 0xcb, 0xa9, 0x87, 0x65, 0x43, 0x21,
    ]
    let bytes = FrontendMessage(.getSharedObject, payload: .sharedObject(SharedObject(uuid: uuid))).encoded()
    #expect(
      bytes == hex("29 00 00 00 | 01 00 00 00 | 10 00 00 00 | 12 34 56 78 9a bc de f0 0f ed cb a9 87 65 43 21"))
  }

  @Test("SharedObject pads a short UUID and truncates a long one to 16 bytes")
  func sharedObjectNormalisesLength() {
    #expect(SharedObject(uuid: [1, 2]).uuid == [1, 2] + Array(repeating: 0, count: 14))
    #expect(SharedObject(uuid: Array(0..<20)).uuid == Array(0..<16))
  }

  @Test("BACKEND_VRING_HOST_NOTIFIER_MSG: index+flags, size, offset")
  func hostNotifier() {
    let area = VringArea(indexAndFlags: 2 | VringArea.noFDFlag, size: 0x1000, offset: 0)
    let bytes = BackendMessage(.vringHostNotifier, payload: .vringArea(area)).encoded()
    #expect(
      bytes
        == hex(
          """
          03 00 00 00 | 01 00 00 00 | 18 00 00 00
          02 01 00 00 00 00 00 00 | 00 10 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00
          """))
  }

  @Test("BACKEND_SHMEM_MAP: shmid, 7 bytes of padding, fd offset, shm offset, length, flags")
  func shmemMap() {
    let request = ShmemMapRequest(
      shmid: 0xff, fdOffset: 0x1_0000_0000, shmOffset: 0x20_0000, length: 0x40_0000, flags: 0)
    let bytes = BackendMessage(.shmemMap, payload: .shmemMap(request)).encoded()
    #expect(
      bytes
        == hex(
          """
          09 00 00 00 | 01 00 00 00 | 28 00 00 00
          ff | 00 00 00 00 00 00 00
          00 00 00 00 01 00 00 00 | 00 00 20 00 00 00 00 00 | 00 00 40 00 00 00 00 00 | 00 00 00 00 00 00 00 00
          """))
  }

  @Test("GET_SHMEM_CONFIG reply: count, padding, 256 sizes (2056 bytes)")
  func shmemConfigReply() {
    let bytes = FrontendMessage(.getShmemConfig, flags: .reply, payload: Sample.shmemConfig.payload).encoded()
    #expect(bytes.count == 12 + 2056)
    #expect(bytes == hex("2c 00 00 00 | 05 00 00 00 | 08 08 00 00 | " + Sample.shmemConfig.hex))
  }

  @Test("NEED_REPLY and REPLY flags land in the flags word")
  func replyFlags() {
    let request = FrontendMessage(.setVringNum, flags: .needReply, payload: .vringState(VringState(index: 0, num: 256)))
    #expect(request.needsReply && !request.isReply)
    #expect(request.encoded() == hex("08 00 00 00 | 09 00 00 00 | 08 00 00 00 | 00 00 00 00 | 00 01 00 00"))

    let ack = FrontendMessage(.setVringNum, flags: .reply, payload: .u64(0))
    #expect(ack.isReply && !ack.needsReply)
    #expect(ack.encoded() == hex("08 00 00 00 | 05 00 00 00 | 08 00 00 00 | 00 00 00 00 00 00 00 00"))

    let features = FrontendMessage(.getFeatures, flags: .reply, payload: .u64(0x1_7000_0000))
    #expect(features.encoded() == hex("01 00 00 00 | 05 00 00 00 | 08 00 00 00 | 00 00 00 70 01 00 00 00"))

    let both = BackendMessage(.iotlbMsg, flags: [.reply, .needReply], payload: .u64(1))
    #expect(both.encoded() == hex("01 00 00 00 | 0d 00 00 00 | 08 00 00 00 | 01 00 00 00 00 00 00 00"))
  }
}

@Suite("Round trip")
struct RoundTripTests {
  @Test(
    "Front-end request: encode, decode header, decode request gives the original",
    arguments: FrontendRequest.allKnown)
  func frontend(_ code: FrontendRequest) throws {
    let payload = Sample.of(code.requestLayout).payload
    let fds = satisfyingFDCount(code.requestFDs, payload: payload)
    for flags: HeaderFlags in [.version1, .needReply] {
      let message = FrontendMessage(code, flags: flags, payload: payload)
      let bytes = message.encoded()
      let header = try MessageHeader.decode(Array(bytes[0..<12]))
      let size = UInt32(bytes.count - 12)
      #expect(header == MessageHeader(request: code.rawValue, flags: flags.union(.version1), size: size))
      let decoded = try FrontendMessage.decodeRequest(header: header, body: Array(bytes[12...]), fdCount: fds)
      #expect(decoded == message)
      #expect(decoded.encoded() == bytes)
    }
  }

  @Test(
    "Back-end request: encode, decode header, decode request gives the original",
    arguments: BackendRequest.allKnown)
  func backend(_ code: BackendRequest) throws {
    let payload = Sample.of(code.requestLayout).payload
    let fds = satisfyingFDCount(code.requestFDs, payload: payload)
    for flags: HeaderFlags in [.version1, .needReply] {
      let message = BackendMessage(code, flags: flags, payload: payload)
      let bytes = message.encoded()
      let header = try MessageHeader.decode(Array(bytes[0..<12]))
      #expect(header.request == code.rawValue)
      #expect(header.size == UInt32(bytes.count - 12))
      let decoded = try BackendMessage.decodeRequest(header: header, body: Array(bytes[12...]), fdCount: fds)
      #expect(decoded == message)
    }
  }

  @Test("Explicit replies round-trip through decodeReply", arguments: FrontendRequest.allKnown)
  func frontendReply(_ code: FrontendRequest) throws {
    let layout = code.replyLayout ?? .u64
    let payload = Sample.of(layout).payload
    let fds = code.replyLayout == nil ? 0 : satisfyingFDCount(code.replyFDs, payload: payload)
    let reply = FrontendMessage(code, flags: .reply, payload: payload)
    let bytes = reply.encoded()
    let header = try MessageHeader.decode(Array(bytes[0..<12]))
    #expect(header.flags.rawValue == 0x5)
    let decoded = try FrontendMessage.decodeReply(to: code, header: header, body: Array(bytes[12...]), fdCount: fds)
    #expect(decoded == reply)
  }

  @Test("Back-end channel replies round-trip through decodeReply", arguments: BackendRequest.allKnown)
  func backendReply(_ code: BackendRequest) throws {
    let reply = BackendMessage(code, flags: .reply, payload: .u64(0))
    let bytes = reply.encoded()
    let header = try MessageHeader.decode(Array(bytes[0..<12]))
    let fds = code.replyLayout == nil ? 0 : satisfyingFDCount(code.replyFDs, payload: reply.payload)
    let decoded = try BackendMessage.decodeReply(to: code, header: header, body: Array(bytes[12...]), fdCount: fds)
    #expect(decoded == reply)
  }

  @Test("Unknown codes round-trip with an opaque body", arguments: [0, 46, 1000, UInt32.max])
  func unknown(_ raw: UInt32) throws {
    let message = FrontendMessage(FrontendRequest(rawValue: raw), payload: .opaque([1, 2, 3]))
    let decoded = try decodeRequest(message.encoded(), as: FrontendRequest.self, fdCount: 0)
    #expect(decoded == message)
  }
}
