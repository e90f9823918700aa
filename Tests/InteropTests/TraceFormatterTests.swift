import Foundation
import Testing
import VhostProtocol
import VhostTools

/// The tracer's decoding of single messages, text and JSON.
@Suite
struct TraceFormatterTests {
  /// The JSON line parsed into a dictionary.
  static func parse(_ line: String) throws -> [String: Any] {
    let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
    return try #require(object as? [String: Any], "not a JSON object: \(line)")
  }

  static let region = MemoryRegion(
    guestPhysAddr: 0x1_0000_0000, memorySize: 0x1000_0000, userAddr: 0x7f12_3456_0000, mmapOffset: 0x2000)

  @Test("SET_MEM_TABLE: flags, regions as gpa/size/uva/offset, fd count")
  func memTable() throws {
    var f = MessageFormatter()
    let bytes = FrontendMessage(
      .setMemTable, flags: .needReply, payload: .memoryTable(MemoryTable(regions: [Self.region]))
    ).encoded()
    let m = f.format(bytes, fds: 1, direction: .frontToBack, nanoseconds: 1_500_000, connection: 3)
    #expect(
      m.text == "0.001500 #3 F→B    SET_MEM_TABLE [NEED_REPLY] nregions=1 "
        + "regions=[{gpa=0x100000000 size=0x10000000 uva=0x7f1234560000 offset=0x2000}] fds=1")
    let json = try Self.parse(m.json)
    #expect(json["t"] as? Double == 0.0015)
    #expect(json["conn"] as? Int == 3)
    #expect(json["dir"] as? String == "F→B")
    #expect(json["request"] as? String == "SET_MEM_TABLE")
    #expect(json["code"] as? Int == 5)
    #expect(json["flags"] as? [String] == ["NEED_REPLY"])
    #expect(json["size"] as? Int == 40)
    #expect(json["fds"] as? Int == 1)
    let payload = try #require(json["payload"] as? [String: Any])
    #expect(payload["nregions"] as? Int == 1)
    let regions = try #require(payload["regions"] as? [[String: Any]])
    #expect(regions.count == 1)
    #expect(regions.first?["gpa"] as? UInt64 == 0x1_0000_0000)
    #expect(regions.first?["size"] as? UInt64 == 0x1000_0000)
    #expect(regions.first?["uva"] as? UInt64 == 0x7f12_3456_0000)
    #expect(regions.first?["offset"] as? UInt64 == 0x2000)

    // Its REPLY_ACK is decoded as the answer to it.
    let ack = f.format(
      FrontendMessage(.setMemTable, flags: .reply, payload: .u64(0)).encoded(), fds: 0, direction: .backToFront)
    #expect(ack.text.hasSuffix("B→F    SET_MEM_TABLE [REPLY] ack=0 fds=0"), "\(ack.text)")
    #expect(ack.note == nil)
  }

  @Test("SET_VRING_ADDR: index, flags and the three ring addresses")
  func vringAddr() throws {
    var f = MessageFormatter()
    let address = VringAddress(index: 1, desc: 0x7f00_0000_1000, used: 0x7f00_0000_3000, avail: 0x7f00_0000_2000)
    let m = f.format(
      FrontendMessage(.setVringAddr, payload: .vringAddress(address)).encoded(), fds: 0, direction: .frontToBack)
    #expect(
      m.text.hasSuffix(
        "F→B    SET_VRING_ADDR index=1 flags=0x0 desc=0x7f0000001000 used=0x7f0000003000 avail=0x7f0000002000 "
          + "log=0x0 fds=0"), "\(m.text)")
    let payload = try #require(try Self.parse(m.json)["payload"] as? [String: Any])
    #expect(payload["index"] as? Int == 1)
    #expect(payload["desc"] as? UInt64 == 0x7f00_0000_1000)
    #expect(payload["used"] as? UInt64 == 0x7f00_0000_3000)
    #expect(payload["avail"] as? UInt64 == 0x7f00_0000_2000)
    #expect((payload["flags"] as? [String: Any])?["value"] as? Int == 0)
  }

  @Test("GET_FEATURES reply: feature bits by name, the device type inferred from them")
  func getFeaturesReply() throws {
    var f = MessageFormatter()
    let request = f.format(FrontendMessage(.getFeatures).encoded(), fds: 0, direction: .frontToBack)
    #expect(request.text.hasSuffix("F→B    GET_FEATURES fds=0"), "\(request.text)")
    // qemu-storage-daemon's offer (PEERS.md).
    let offer: UInt64 = 0x1_7500_7e46
    let m = f.format(
      FrontendMessage(.getFeatures, flags: .reply, payload: .u64(offer)).encoded(), fds: 0, direction: .backToFront)
    #expect(f.device == .blk)
    #expect(m.isReply)
    #expect(m.text.contains("B→F    GET_FEATURES [REPLY] features=0x175007e46 ("), "\(m.text)")
    for name in ["BLK_SEG_MAX", "BLK_FLUSH", "BLK_DISCARD", "RING_EVENT_IDX", "PROTOCOL_FEATURES", "VERSION_1"] {
      #expect(m.text.contains(name), "\(m.text) lacks \(name)")
    }
    let json = try Self.parse(m.json)
    #expect(json["flags"] as? [String] == ["REPLY"])
    let features = try #require((json["payload"] as? [String: Any])?["features"] as? [String: Any])
    #expect(features["value"] as? UInt64 == offer)
    let names = try #require(features["names"] as? [String])
    #expect(names.contains("VERSION_1") && names.contains("BLK_FLUSH") && names.contains("RING_INDIRECT_DESC"))
    #expect(names.count == offer.nonzeroBitCount)
  }

  @Test("SET_PROTOCOL_FEATURES: protocol feature bits by name")
  func setProtocolFeatures() throws {
    var f = MessageFormatter()
    let m = f.format(
      FrontendMessage(.setProtocolFeatures, payload: .u64(0x8f2b)).encoded(), fds: 0, direction: .frontToBack)
    let expected = [
      "MQ", "LOG_SHMFD", "REPLY_ACK", "BACKEND_REQ", "PAGEFAULT", "CONFIG", "BACKEND_SEND_FD", "HOST_NOTIFIER",
      "CONFIGURE_MEM_SLOTS",
    ]
    #expect(
      m.text.hasSuffix(
        "F→B    SET_PROTOCOL_FEATURES protocol_features=0x8f2b (\(expected.joined(separator: "|"))) fds=0"),
      "\(m.text)")
    let payload = try #require(try Self.parse(m.json)["payload"] as? [String: Any])
    let bits = try #require(payload["protocol_features"] as? [String: Any])
    #expect(bits["value"] as? Int == 0x8f2b)
    #expect(bits["names"] as? [String] == expected)
  }

  @Test("vring state, vring files, config bytes, u64 replies, back-end channel, malformed bodies")
  func others() throws {
    var f = MessageFormatter(device: .blk)
    func line(_ bytes: [UInt8], _ dir: TraceDirection = .frontToBack, fds: Int = 0) -> String {
      let text = f.format(bytes, fds: fds, direction: dir).text
      return String(text[text.range(of: dir.rawValue)!.lowerBound...])
    }
    #expect(
      line(FrontendMessage(.setVringNum, payload: .vringState(VringState(index: 0, num: 256))).encoded())
        .hasSuffix("SET_VRING_NUM index=0 num=256 fds=0"))
    #expect(
      line(FrontendMessage(.setVringKick, payload: .u64(1)).encoded(), fds: 1)
        .hasSuffix("SET_VRING_KICK index=1 nofd=false fds=1"))
    #expect(
      line(FrontendMessage(.setVringCall, payload: .u64(0x100)).encoded())
        .hasSuffix("SET_VRING_CALL index=0 nofd=true fds=0"))
    #expect(
      line(FrontendMessage(.setVringEnable, payload: .vringState(VringState(index: 2, num: 1))).encoded())
        .hasSuffix("SET_VRING_ENABLE index=2 enable=1 fds=0"))
    _ = line(FrontendMessage(.getConfig, payload: .config(ConfigSpace(offset: 0, bytes: [0, 0]))).encoded())
    #expect(
      line(
        FrontendMessage(.getConfig, flags: .reply, payload: .config(ConfigSpace(offset: 0, bytes: [0x00, 0x40])))
          .encoded(), .backToFront) == "B→F    GET_CONFIG [REPLY] offset=0 size=2 flags=0x0 bytes=0040 fds=0")
    _ = line(FrontendMessage(.getQueueNum).encoded())
    #expect(
      line(FrontendMessage(.getQueueNum, flags: .reply, payload: .u64(4)).encoded(), .backToFront)
        == "B→F    GET_QUEUE_NUM [REPLY] queues=4 fds=0")
    // A reply that answers another request is flagged.
    let stray = f.format(
      FrontendMessage(.getFeatures, flags: .reply, payload: .u64(1)).encoded(), fds: 0, direction: .backToFront)
    #expect(stray.note == "reply to GET_FEATURES, but the last request was GET_QUEUE_NUM")
    // Back-end channel codes are BACKEND_*.
    #expect(
      line(
        BackendMessage(.vringCall, flags: .needReply, payload: .vringState(VringState(index: 1, num: 0))).encoded(),
        .backendChannelBackToFront) == "BC B→F BACKEND_VRING_CALL [NEED_REPLY] index=1 num=0 fds=0")
    #expect(
      line(BackendMessage(.vringCall, flags: .reply, payload: .u64(0)).encoded(), .backendChannelFrontToBack)
        == "BC F→B BACKEND_VRING_CALL [REPLY] ack=0 fds=0")
    // A body of the wrong size is shown with the error and its bytes; odd flags are named.
    var forged = MessageHeader(request: 8, flags: HeaderFlags(rawValue: 0x101), size: 4).encoded()
    forged += [1, 2, 3, 4]
    let bad = line(forged)
    #expect(bad.hasPrefix("F→B    SET_VRING_NUM [RESERVED_0x100] error="), "\(bad)")
    #expect(bad.hasSuffix("raw=01020304 fds=0"), "\(bad)")
    #expect(MessageFormatter.flagNames(0x2) == ["VERSION_2"])
  }
}
