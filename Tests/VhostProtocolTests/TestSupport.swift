import VhostProtocol

/// True on little-endian hosts; the hand-written golden bytes in this suite are little-endian.
let littleEndianHost = UInt16(1).littleEndian == 1

/// Parses hand-written hex such as `"01 00 | ff"`; whitespace and `|` separate bytes.
func hex(_ text: String) -> [UInt8] {
  text.split(whereSeparator: { $0 == " " || $0 == "|" || $0 == "\n" }).map { token in
    guard let byte = UInt8(token, radix: 16) else { fatalError("bad hex token \(token)") }
    return byte
  }
}

/// `count` zero bytes written as hex, for zero-filled tails.
func zeros(_ count: Int) -> String { String(repeating: "00 ", count: count) }

/// A representative payload for one layout with its hand-written wire bytes (little-endian).
struct Sample: Sendable, CustomStringConvertible {
  let layout: PayloadLayout
  let payload: Payload
  let hex: String

  var description: String { "\(layout)" }

  static let empty = Sample(layout: .empty, payload: .empty, hex: "")

  /// Index 1 with the NOFD bit (0x100) clear when used as a vring-file payload.
  static let u64 = Sample(layout: .u64, payload: .u64(0x0807_0605_0403_0201), hex: "01 02 03 04 05 06 07 08")

  static let vringState = Sample(
    layout: .vringState, payload: .vringState(VringState(index: 1, num: 0x0302)), hex: "01 00 00 00 | 02 03 00 00")

  static let vringAddress = Sample(
    layout: .vringAddress,
    payload: .vringAddress(
      VringAddress(
        index: 2, flags: VringAddress.flagLog, desc: 0x7f00_0000_1000, used: 0x7f00_0000_2000,
        avail: 0x7f00_0000_3000, log: 0x40_0000)),
    hex: """
      02 00 00 00 | 01 00 00 00 | 00 10 00 00 00 7f 00 00 | 00 20 00 00 00 7f 00 00
      00 30 00 00 00 7f 00 00 | 00 00 40 00 00 00 00 00
      """)

  static let region0 = MemoryRegion(
    guestPhysAddr: 0, memorySize: 0x4000_0000, userAddr: 0x7f12_3400_0000, mmapOffset: 0)
  static let region0Hex = "00 00 00 00 00 00 00 00 | 00 00 00 40 00 00 00 00 | 00 00 00 34 12 7f 00 00 | " + zeros(8)
  static let region1 = MemoryRegion(
    guestPhysAddr: 0x1_0000_0000, memorySize: 0x8000_0000, userAddr: 0x7f12_7400_0000, mmapOffset: 0x4000_0000)
  static let region1Hex = """
    00 00 00 00 01 00 00 00 | 00 00 00 80 00 00 00 00 | 00 00 00 74 12 7f 00 00 | 00 00 00 40 00 00 00 00
    """

  /// Two regions: nregions 2, padding, the two regions (8 + 2 × 32 bytes, as QEMU sends it).
  static let memoryTable = Sample(
    layout: .memoryTable, payload: .memoryTable(MemoryTable(regions: [region0, region1])),
    hex: "02 00 00 00 | 00 00 00 00 | " + region0Hex + " | " + region1Hex)

  static let singleRegion = Sample(
    layout: .singleRegion,
    payload: .singleRegion(
      SingleMemoryRegion(
        MemoryRegion(
          guestPhysAddr: 0x1_0000_0000, memorySize: 0x20_0000, userAddr: 0x7f00_0020_0000, mmapOffset: 0x1000))),
    hex: """
      00 00 00 00 00 00 00 00 | 00 00 00 00 01 00 00 00 | 00 00 20 00 00 00 00 00 | 00 00 20 00 00 7f 00 00
      00 10 00 00 00 00 00 00
      """)

  static let log = Sample(
    layout: .log, payload: .log(LogDescription(mmapSize: 0x2_0000, mmapOffset: 0x100)),
    hex: "00 00 02 00 00 00 00 00 | 00 01 00 00 00 00 00 00")

  static let iotlb = Sample(
    layout: .iotlb,
    payload: .iotlb(
      IOTLBMessage(iova: 0x1000, size: 0x2000, userAddr: 0x7f00_0000_1000, permissions: 3, type: .update)),
    hex: """
      00 10 00 00 00 00 00 00 | 00 20 00 00 00 00 00 00 | 00 10 00 00 00 7f 00 00 | 03 | 02 | 00 00 00 00 00 00
      """)

  static let config = Sample(
    layout: .config, payload: .config(ConfigSpace(offset: 0x14, flags: 1, bytes: [0xaa, 0xbb, 0xcc, 0xdd])),
    hex: "14 00 00 00 | 04 00 00 00 | 01 00 00 00 | aa bb cc dd")

  static let vringArea = Sample(
    layout: .vringArea, payload: .vringArea(VringArea(indexAndFlags: 1, size: 0x1000, offset: 0x3000)),
    hex: "01 00 00 00 00 00 00 00 | 00 10 00 00 00 00 00 00 | 00 30 00 00 00 00 00 00")

  static let inflight = Sample(
    layout: .inflight,
    payload: .inflight(InflightDescription(mmapSize: 0x1_0000, mmapOffset: 0x40, numQueues: 2, queueSize: 128)),
    hex: "00 00 01 00 00 00 00 00 | 40 00 00 00 00 00 00 00 | 02 00 | 80 00 | 00 00 00 00")

  static let sharedObject = Sample(
    layout: .sharedObject, payload: .sharedObject(SharedObject(uuid: Array(0...15))),
    hex: "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f")

  static let deviceStateTransfer = Sample(
    layout: .deviceStateTransfer,
    payload: .deviceStateTransfer(DeviceStateTransfer(direction: .load, phase: 0)),
    hex: "01 00 00 00 | 00 00 00 00")

  static let shmemMap = Sample(
    layout: .shmemMap,
    payload: .shmemMap(ShmemMapRequest(shmid: 3, fdOffset: 0x1000, shmOffset: 0x2_0000, length: 0x1_0000, flags: 1)),
    hex: """
      03 | 00 00 00 00 00 00 00 | 00 10 00 00 00 00 00 00 | 00 00 02 00 00 00 00 00 | 00 00 01 00 00 00 00 00
      01 00 00 00 00 00 00 00
      """)

  static let shmemConfig = Sample(
    layout: .shmemConfig, payload: .shmemConfig(ShmemConfig(nregions: 2, memorySizes: [0x1000, 0x20_0000])),
    hex: "02 00 00 00 | 00 00 00 00 | 00 10 00 00 00 00 00 00 | 00 00 20 00 00 00 00 00 | " + zeros(254 * 8))

  static let opaque = Sample(layout: .opaque, payload: .opaque([0xde, 0xad, 0xbe, 0xef]), hex: "de ad be ef")

  static let u64OrEmpty = Sample(layout: .u64OrEmpty, payload: .u64(0), hex: zeros(8))

  /// The sample for a layout.
  static func of(_ layout: PayloadLayout) -> Sample {
    switch layout {
    case .empty: empty
    case .u64: u64
    case .u64OrEmpty: u64OrEmpty
    case .vringState: vringState
    case .vringAddress: vringAddress
    case .memoryTable: memoryTable
    case .singleRegion: singleRegion
    case .log: log
    case .iotlb: iotlb
    case .config: config
    case .vringArea: vringArea
    case .inflight: inflight
    case .sharedObject: sharedObject
    case .deviceStateTransfer: deviceStateTransfer
    case .shmemMap: shmemMap
    case .shmemConfig: shmemConfig
    case .opaque: opaque
    }
  }
}

/// The descriptor count that satisfies `rule` for `payload` (the largest allowed count where a range is allowed,
/// zero for descriptors that are only tolerated).
func satisfyingFDCount(_ rule: FDRule, payload: Payload) -> Int {
  switch rule {
  case .none: return 0
  case .exactly(let n), .upTo(let n): return n
  case .ignored: return 0
  case .onePerRegion:
    if case .memoryTable(let table) = payload { return table.regions.count }
    return 0
  case .vringFile: return (payload.u64Value ?? 0) & Limits.vringNoFDMask == 0 ? 1 : 0
  }
}

/// Splits an encoded message into header and body and runs both decoders.
func decodeRequest<Code: VhostRequestCode>(
  _ bytes: [UInt8], as _: Code.Type, fdCount: Int
) throws -> Message<Code> {
  let header = try MessageHeader.decode(Array(bytes.prefix(MessageHeader.size)))
  let body = Array(bytes.dropFirst(MessageHeader.size))
  return try Message<Code>.decodeRequest(header: header, body: body, fdCount: fdCount)
}

/// A fixed-seed xorshift64 generator, so sweeps are reproducible.
struct XorShift64 {
  private var state: UInt64

  init(seed: UInt64) { state = seed == 0 ? 0x9e37_79b9_7f4a_7c15 : seed }

  mutating func next() -> UInt64 {
    state ^= state << 13
    state ^= state >> 7
    state ^= state << 17
    return state
  }

  /// A number in `0..<bound`.
  mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }

  mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8(truncatingIfNeeded: next()) } }
}
