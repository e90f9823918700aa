import Testing
import VhostProtocol

/// The specification's names, indexed by code.
let frontendNames: [UInt32: String] = [
  1: "GET_FEATURES", 2: "SET_FEATURES", 3: "SET_OWNER", 4: "RESET_OWNER", 5: "SET_MEM_TABLE", 6: "SET_LOG_BASE",
  7: "SET_LOG_FD", 8: "SET_VRING_NUM", 9: "SET_VRING_ADDR", 10: "SET_VRING_BASE", 11: "GET_VRING_BASE",
  12: "SET_VRING_KICK", 13: "SET_VRING_CALL", 14: "SET_VRING_ERR", 15: "GET_PROTOCOL_FEATURES",
  16: "SET_PROTOCOL_FEATURES", 17: "GET_QUEUE_NUM", 18: "SET_VRING_ENABLE", 19: "SEND_RARP", 20: "NET_SET_MTU",
  21: "SET_BACKEND_REQ_FD", 22: "IOTLB_MSG", 23: "SET_VRING_ENDIAN", 24: "GET_CONFIG", 25: "SET_CONFIG",
  26: "CREATE_CRYPTO_SESSION", 27: "CLOSE_CRYPTO_SESSION", 28: "POSTCOPY_ADVISE", 29: "POSTCOPY_LISTEN",
  30: "POSTCOPY_END", 31: "GET_INFLIGHT_FD", 32: "SET_INFLIGHT_FD", 33: "GPU_SET_SOCKET", 34: "RESET_DEVICE",
  35: "VRING_KICK", 36: "GET_MAX_MEM_SLOTS", 37: "ADD_MEM_REG", 38: "REM_MEM_REG", 39: "SET_STATUS",
  40: "GET_STATUS", 41: "GET_SHARED_OBJECT", 42: "SET_DEVICE_STATE_FD", 43: "CHECK_DEVICE_STATE",
  44: "GET_SHMEM_CONFIG", 45: "GET_VRING_BASE_SKIP_DRAIN",
]

let backendNames: [UInt32: String] = [
  1: "BACKEND_IOTLB_MSG", 2: "BACKEND_CONFIG_CHANGE_MSG", 3: "BACKEND_VRING_HOST_NOTIFIER_MSG",
  4: "BACKEND_VRING_CALL", 5: "BACKEND_VRING_ERR", 6: "BACKEND_SHARED_OBJECT_ADD", 7: "BACKEND_SHARED_OBJECT_REMOVE",
  8: "BACKEND_SHARED_OBJECT_LOOKUP", 9: "BACKEND_SHMEM_MAP", 10: "BACKEND_SHMEM_UNMAP",
]

let protocolFeatureNames: [String] = [
  "MQ", "LOG_SHMFD", "RARP", "REPLY_ACK", "MTU", "BACKEND_REQ", "CROSS_ENDIAN", "CRYPTO_SESSION", "PAGEFAULT",
  "CONFIG", "BACKEND_SEND_FD", "HOST_NOTIFIER", "INFLIGHT_SHMFD", "RESET_DEVICE", "INBAND_NOTIFICATIONS",
  "CONFIGURE_MEM_SLOTS", "STATUS", "XEN_MMAP", "SHARED_OBJECT", "DEVICE_STATE", "GET_VRING_BASE_INFLIGHT",
  "GPA_ADDRESSES", "SHMEM", "GET_VRING_BASE_SKIP_DRAIN",
]

@Suite("Names")
struct NameTests {
  @Test("Front-end requests 1–45 are known, with the spec's distinct names")
  func frontendNamesMatchSpec() {
    #expect(FrontendRequest.allKnown.count == 45)
    for raw in UInt32(1)...45 {
      let code = FrontendRequest(rawValue: raw)
      #expect(code.isKnown, "\(raw)")
      #expect(code.name == frontendNames[raw], "\(raw)")
      #expect(code.description == code.name)
    }
    #expect(Set(FrontendRequest.allKnown.map(\.name)).count == 45)
    #expect(FrontendRequest(rawValue: 21).name == "SET_BACKEND_REQ_FD")
    #expect(FrontendRequest(rawValue: 45).name == "GET_VRING_BASE_SKIP_DRAIN")
  }

  @Test("Named constants carry the spec's numbers")
  func frontendConstants() {
    let pairs: [(FrontendRequest, UInt32)] = [
      (.getFeatures, 1), (.setMemTable, 5), (.setVringKick, 12), (.setBackendReqFD, 21), (.iotlbMsg, 22),
      (.getConfig, 24), (.getInflightFD, 31), (.vringKick, 35), (.addMemReg, 37), (.remMemReg, 38),
      (.getSharedObject, 41), (.setDeviceStateFD, 42), (.getShmemConfig, 44), (.getVringBaseSkipDrain, 45),
    ]
    for (code, raw) in pairs { #expect(code.rawValue == raw, "\(code)") }
    let backend: [(BackendRequest, UInt32)] = [
      (.iotlbMsg, 1), (.configChange, 2), (.vringHostNotifier, 3), (.sharedObjectLookup, 8), (.shmemMap, 9),
      (.shmemUnmap, 10),
    ]
    for (code, raw) in backend { #expect(code.rawValue == raw, "\(code)") }
  }

  @Test("Back-end requests 1–10 are known, with the spec's distinct names")
  func backendNamesMatchSpec() {
    #expect(BackendRequest.allKnown.count == 10)
    for raw in UInt32(1)...10 {
      let code = BackendRequest(rawValue: raw)
      #expect(code.isKnown, "\(raw)")
      #expect(code.name == backendNames[raw], "\(raw)")
    }
    #expect(Set(BackendRequest.allKnown.map(\.name)).count == 10)
    #expect(BackendRequest(rawValue: 9).name == "BACKEND_SHMEM_MAP")
  }

  @Test("Unknown front-end codes are UNKNOWN(n) and decode with an opaque body", arguments: [0, 46, 1000, UInt32.max])
  func unknownFrontend(_ raw: UInt32) throws {
    let code = FrontendRequest(rawValue: raw)
    #expect(!code.isKnown)
    #expect(code.name == "UNKNOWN(\(raw))")
    #expect(code.requestLayout == .opaque)
    #expect(code.replyLayout == nil)
    let body: [UInt8] = [9, 8, 7, 6, 5]
    let header = MessageHeader(request: raw, flags: .version1, size: UInt32(body.count))
    let message = try FrontendMessage.decodeRequest(header: header, body: body, fdCount: 0)
    #expect(message.code.rawValue == raw)
    #expect(message.payload == .opaque(body))
    let empty = try FrontendMessage.decodeRequest(header: header, body: [], fdCount: 0)
    #expect(empty.payload == .opaque([]))
  }

  @Test("Unknown back-end codes are UNKNOWN(n) and decode with an opaque body", arguments: [0, 11, 1000, UInt32.max])
  func unknownBackend(_ raw: UInt32) throws {
    let code = BackendRequest(rawValue: raw)
    #expect(!code.isKnown)
    #expect(code.name == "UNKNOWN(\(raw))")
    let header = MessageHeader(request: raw, flags: .version1, size: 3)
    let message = try BackendMessage.decodeRequest(header: header, body: [1, 2, 3], fdCount: 0)
    #expect(message.payload == .opaque([1, 2, 3]))
  }

  @Test("Protocol feature bits 0–23 have the spec's names")
  func protocolFeatureBitNames() {
    #expect(ProtocolFeatures.bitNames == protocolFeatureNames)
    for (bit, name) in protocolFeatureNames.enumerated() {
      #expect(ProtocolFeatures(bit: bit).names == [name], "bit \(bit)")
      #expect(ProtocolFeatures(bit: bit).rawValue == UInt64(1) << UInt64(bit))
    }
    #expect(ProtocolFeatures.configureMemSlots.names == ["CONFIGURE_MEM_SLOTS"])
    #expect(ProtocolFeatures.configureMemSlots.rawValue == 1 << 15)
    #expect(ProtocolFeatures.getVringBaseSkipDrain.names == ["GET_VRING_BASE_SKIP_DRAIN"])
    #expect(ProtocolFeatures.getVringBaseSkipDrain.rawValue == 1 << 23)
    #expect(ProtocolFeatures.shmem.rawValue == 1 << 22)
    #expect(ProtocolFeatures.deviceState.rawValue == 1 << 19)
    #expect(ProtocolFeatures.backendReq.rawValue == 1 << 5)
    #expect(ProtocolFeatures(bit: 24).names == ["bit 24"])
    #expect(ProtocolFeatures(rawValue: 0).names.isEmpty)
  }

  @Test("Seed set is MQ, LOG_SHMFD, RARP, REPLY_ACK, MTU (0x1f); all defined bits are 0–23")
  func featureSets() {
    #expect(ProtocolFeatures.seedSet.rawValue == 0x1f)
    #expect(ProtocolFeatures.seedSet.names == ["MQ", "LOG_SHMFD", "RARP", "REPLY_ACK", "MTU"])
    #expect(ProtocolFeatures.seedSet.description == "0x1f [MQ, LOG_SHMFD, RARP, REPLY_ACK, MTU]")
    #expect(ProtocolFeatures.allDefined.rawValue == 0xff_ffff)
    #expect(ProtocolFeatures.allDefined.names == protocolFeatureNames)
  }

  @Test("Virtio transport feature anchors")
  func virtioFeatureBits() {
    #expect(VirtioFeatures.protocolFeatures.rawValue == 1 << 30)
    #expect(VirtioFeatures.logAll.rawValue == 1 << 26)
    #expect(VirtioFeatures.version1.rawValue == 1 << 32)
    #expect(VirtioFeatures.ringPacked.rawValue == 1 << 34)
    #expect(VirtioFeatures([.protocolFeatures, .version1]).names() == ["PROTOCOL_FEATURES", "VERSION_1"])
    #expect(VirtioFeatures(bit: 5).names(for: .blk) == ["BLK_RO"])
    #expect(VirtioFeatures(bit: 5).names() == ["bit 5"])
  }
}
