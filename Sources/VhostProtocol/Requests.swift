/// How many file descriptors a message may carry.
public enum FDRule: Sendable, Equatable {
  /// No descriptors allowed.
  case none
  /// Exactly `n` descriptors.
  case exactly(Int)
  /// Zero up to `n` descriptors, all kept.
  case upTo(Int)
  /// One descriptor per memory region in the payload (SET_MEM_TABLE).
  case onePerRegion
  /// One descriptor unless the vring-file payload has the NOFD bit set (SET_VRING_KICK/CALL/ERR).
  case vringFile
  /// Zero up to `n` descriptors are tolerated but must be closed at once (REM_MEM_REG).
  case ignored(upTo: Int)

  /// The largest count this rule can accept.
  public var maximum: Int {
    switch self {
    case .none: 0
    case .exactly(let n), .upTo(let n), .ignored(let n): n
    case .onePerRegion: Limits.baselineRegions
    case .vringFile: 1
    }
  }
}

/// What the body of a message looks like, with its exact wire size.
public enum PayloadLayout: Sendable, Equatable {
  case empty
  case u64
  /// A u64, or nothing at all (some back-ends send an empty reply where others send a u64).
  case u64OrEmpty
  case vringState
  case vringAddress
  case memoryTable
  case singleRegion
  case log
  case iotlb
  case config
  case vringArea
  case inflight
  case sharedObject
  case deviceStateTransfer
  case shmemMap
  case shmemConfig
  /// Implementation-defined bytes (crypto sessions, unknown requests).
  case opaque

  /// The exact size in bytes, or nil if variable.
  public var fixedSize: Int? {
    switch self {
    case .empty: 0
    case .u64: 8
    case .vringState: VringState.size
    case .vringAddress: VringAddress.size
    case .singleRegion: SingleMemoryRegion.size
    case .log: LogDescription.size
    case .iotlb: IOTLBMessage.size
    case .vringArea: VringArea.size
    case .inflight: InflightDescription.size
    case .sharedObject: SharedObject.size
    case .deviceStateTransfer: DeviceStateTransfer.size
    case .shmemMap: ShmemMapRequest.size
    case .shmemConfig: ShmemConfig.size
    case .u64OrEmpty, .config, .opaque, .memoryTable: nil
    }
  }
}

/// Protocol-wide limits.
public enum Limits {
  /// Regions in one SET_MEM_TABLE (`VHOST_MEMORY_BASELINE_NREGIONS`).
  public static let baselineRegions = 8
  /// Largest config space payload (`VHOST_USER_MAX_CONFIG_SIZE`).
  public static let maxConfigSize = 256
  /// Largest message body we accept; bigger sizes are refused before the body is read.
  public static let maxPayloadSize = 4096
  /// Most descriptors a back-end channel message may carry.
  public static let backendChannelMaxFDs = 8
  /// Vring index mask in vring-file payloads.
  public static let vringIndexMask: UInt64 = 0xff
  /// "No file descriptor" bit in vring-file payloads.
  public static let vringNoFDMask: UInt64 = 0x100
  /// Largest virtqueue size the spec allows (split rings).
  public static let maxQueueSize = 32768
  /// Memory slots offered by back-ends that follow libvhost-user/rust-vmm.
  public static let defaultMaxMemSlots = 509
}

/// A request code on either channel: known codes carry their names and rules, unknown ones decode
/// as themselves so the receiver can decide.
public protocol VhostRequestCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible
where RawValue == UInt32 {
  init(rawValue: UInt32)
  /// Whether this code is defined by the specification.
  var isKnown: Bool { get }
  /// The spec's name, e.g. `GET_FEATURES`; `UNKNOWN(n)` otherwise.
  var name: String { get }
  /// The body layout of the request.
  var requestLayout: PayloadLayout { get }
  /// The body layout of the explicit reply, or nil when the request has no reply of its own
  /// (then only a REPLY_ACK u64 may answer it).
  var replyLayout: PayloadLayout? { get }
  /// Descriptors the request may carry.
  var requestFDs: FDRule { get }
  /// Descriptors the reply may carry.
  var replyFDs: FDRule { get }
}

extension VhostRequestCode {
  public var description: String { name }
}

/// Requests sent by the front-end to the back-end (`VHOST_USER_*`), 1–45.
public struct FrontendRequest: VhostRequestCode {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  public static let getFeatures = Self(rawValue: 1)
  public static let setFeatures = Self(rawValue: 2)
  public static let setOwner = Self(rawValue: 3)
  public static let resetOwner = Self(rawValue: 4)
  public static let setMemTable = Self(rawValue: 5)
  public static let setLogBase = Self(rawValue: 6)
  public static let setLogFD = Self(rawValue: 7)
  public static let setVringNum = Self(rawValue: 8)
  public static let setVringAddr = Self(rawValue: 9)
  public static let setVringBase = Self(rawValue: 10)
  public static let getVringBase = Self(rawValue: 11)
  public static let setVringKick = Self(rawValue: 12)
  public static let setVringCall = Self(rawValue: 13)
  public static let setVringErr = Self(rawValue: 14)
  public static let getProtocolFeatures = Self(rawValue: 15)
  public static let setProtocolFeatures = Self(rawValue: 16)
  public static let getQueueNum = Self(rawValue: 17)
  public static let setVringEnable = Self(rawValue: 18)
  public static let sendRARP = Self(rawValue: 19)
  public static let netSetMTU = Self(rawValue: 20)
  public static let setBackendReqFD = Self(rawValue: 21)
  public static let iotlbMsg = Self(rawValue: 22)
  public static let setVringEndian = Self(rawValue: 23)
  public static let getConfig = Self(rawValue: 24)
  public static let setConfig = Self(rawValue: 25)
  public static let createCryptoSession = Self(rawValue: 26)
  public static let closeCryptoSession = Self(rawValue: 27)
  public static let postcopyAdvise = Self(rawValue: 28)
  public static let postcopyListen = Self(rawValue: 29)
  public static let postcopyEnd = Self(rawValue: 30)
  public static let getInflightFD = Self(rawValue: 31)
  public static let setInflightFD = Self(rawValue: 32)
  public static let gpuSetSocket = Self(rawValue: 33)
  public static let resetDevice = Self(rawValue: 34)
  public static let vringKick = Self(rawValue: 35)
  public static let getMaxMemSlots = Self(rawValue: 36)
  public static let addMemReg = Self(rawValue: 37)
  public static let remMemReg = Self(rawValue: 38)
  public static let setStatus = Self(rawValue: 39)
  public static let getStatus = Self(rawValue: 40)
  public static let getSharedObject = Self(rawValue: 41)
  public static let setDeviceStateFD = Self(rawValue: 42)
  public static let checkDeviceState = Self(rawValue: 43)
  public static let getShmemConfig = Self(rawValue: 44)
  public static let getVringBaseSkipDrain = Self(rawValue: 45)

  /// Every request the current specification defines.
  public static let allKnown: [FrontendRequest] = (1...45).map { Self(rawValue: $0) }

  private static let names: [String] = [
    "NONE", "GET_FEATURES", "SET_FEATURES", "SET_OWNER", "RESET_OWNER", "SET_MEM_TABLE", "SET_LOG_BASE",
    "SET_LOG_FD", "SET_VRING_NUM", "SET_VRING_ADDR", "SET_VRING_BASE", "GET_VRING_BASE", "SET_VRING_KICK",
    "SET_VRING_CALL", "SET_VRING_ERR", "GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES", "GET_QUEUE_NUM",
    "SET_VRING_ENABLE", "SEND_RARP", "NET_SET_MTU", "SET_BACKEND_REQ_FD", "IOTLB_MSG", "SET_VRING_ENDIAN",
    "GET_CONFIG", "SET_CONFIG", "CREATE_CRYPTO_SESSION", "CLOSE_CRYPTO_SESSION", "POSTCOPY_ADVISE",
    "POSTCOPY_LISTEN", "POSTCOPY_END", "GET_INFLIGHT_FD", "SET_INFLIGHT_FD", "GPU_SET_SOCKET", "RESET_DEVICE",
    "VRING_KICK", "GET_MAX_MEM_SLOTS", "ADD_MEM_REG", "REM_MEM_REG", "SET_STATUS", "GET_STATUS",
    "GET_SHARED_OBJECT", "SET_DEVICE_STATE_FD", "CHECK_DEVICE_STATE", "GET_SHMEM_CONFIG",
    "GET_VRING_BASE_SKIP_DRAIN",
  ]

  public var isKnown: Bool { (1...45).contains(rawValue) }

  public var name: String { isKnown ? Self.names[Int(rawValue)] : "UNKNOWN(\(rawValue))" }

  public var requestLayout: PayloadLayout {
    switch self {
    case .getFeatures, .setOwner, .resetOwner, .getProtocolFeatures, .getQueueNum, .setLogFD,
      .setBackendReqFD, .postcopyAdvise, .postcopyListen, .postcopyEnd, .gpuSetSocket, .resetDevice,
      .getMaxMemSlots, .getStatus, .checkDeviceState, .getShmemConfig:
      .empty
    case .setFeatures, .setProtocolFeatures, .setVringKick, .setVringCall, .setVringErr, .sendRARP,
      .netSetMTU, .closeCryptoSession, .setStatus:
      .u64
    case .setMemTable: .memoryTable
    case .setLogBase: .log
    case .setVringNum, .setVringBase, .getVringBase, .setVringEnable, .setVringEndian, .vringKick,
      .getVringBaseSkipDrain:
      .vringState
    case .setVringAddr: .vringAddress
    case .iotlbMsg: .iotlb
    case .getConfig, .setConfig: .config
    case .getInflightFD, .setInflightFD: .inflight
    case .addMemReg, .remMemReg: .singleRegion
    case .getSharedObject: .sharedObject
    case .setDeviceStateFD: .deviceStateTransfer
    default: .opaque
    }
  }

  public var replyLayout: PayloadLayout? {
    switch self {
    case .getFeatures, .getProtocolFeatures, .getQueueNum, .getMaxMemSlots, .getStatus, .postcopyEnd,
      .checkDeviceState, .iotlbMsg:
      .u64
    case .setLogBase, .postcopyAdvise, .postcopyListen, .getSharedObject, .setDeviceStateFD: .u64OrEmpty
    case .getVringBase, .getVringBaseSkipDrain: .vringState
    case .getConfig: .config
    case .getInflightFD: .inflight
    case .getShmemConfig: .shmemConfig
    case .createCryptoSession: .opaque
    default: nil
    }
  }

  public var requestFDs: FDRule {
    switch self {
    case .setMemTable: .onePerRegion
    case .setLogBase: .upTo(1)
    case .setVringKick, .setVringCall, .setVringErr: .vringFile
    case .setLogFD, .setBackendReqFD, .setInflightFD, .addMemReg, .setDeviceStateFD, .gpuSetSocket: .exactly(1)
    case .remMemReg: .ignored(upTo: 1)
    default: isKnown ? .none : .ignored(upTo: 32)
    }
  }

  public var replyFDs: FDRule {
    switch self {
    case .postcopyAdvise, .getInflightFD: .exactly(1)
    case .getSharedObject, .setDeviceStateFD: .upTo(1)
    default: .none
    }
  }

  /// Requests that concern the whole device rather than one queue; a front-end with several device
  /// views on one connection sends them only from the view whose first queue index is 0.
  public var isOneTime: Bool {
    switch self {
    case .setOwner, .resetOwner, .setMemTable, .getQueueNum, .netSetMTU, .addMemReg, .remMemReg,
      .setLogBase, .resetDevice, .setBackendReqFD, .getMaxMemSlots, .setStatus, .getStatus:
      true
    default: false
    }
  }
}

/// Requests sent by the back-end to the front-end on the back-end channel (`VHOST_USER_BACKEND_*`), 1–10.
public struct BackendRequest: VhostRequestCode {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  public static let iotlbMsg = Self(rawValue: 1)
  public static let configChange = Self(rawValue: 2)
  public static let vringHostNotifier = Self(rawValue: 3)
  public static let vringCall = Self(rawValue: 4)
  public static let vringErr = Self(rawValue: 5)
  public static let sharedObjectAdd = Self(rawValue: 6)
  public static let sharedObjectRemove = Self(rawValue: 7)
  public static let sharedObjectLookup = Self(rawValue: 8)
  public static let shmemMap = Self(rawValue: 9)
  public static let shmemUnmap = Self(rawValue: 10)

  public static let allKnown: [BackendRequest] = (1...10).map { Self(rawValue: $0) }

  private static let names: [String] = [
    "NONE", "BACKEND_IOTLB_MSG", "BACKEND_CONFIG_CHANGE_MSG", "BACKEND_VRING_HOST_NOTIFIER_MSG",
    "BACKEND_VRING_CALL", "BACKEND_VRING_ERR", "BACKEND_SHARED_OBJECT_ADD", "BACKEND_SHARED_OBJECT_REMOVE",
    "BACKEND_SHARED_OBJECT_LOOKUP", "BACKEND_SHMEM_MAP", "BACKEND_SHMEM_UNMAP",
  ]

  public var isKnown: Bool { (1...10).contains(rawValue) }
  public var name: String { isKnown ? Self.names[Int(rawValue)] : "UNKNOWN(\(rawValue))" }

  public var requestLayout: PayloadLayout {
    switch self {
    case .iotlbMsg: .iotlb
    case .configChange: .empty
    case .vringHostNotifier: .vringArea
    case .vringCall, .vringErr: .vringState
    case .sharedObjectAdd, .sharedObjectRemove, .sharedObjectLookup: .sharedObject
    case .shmemMap, .shmemUnmap: .shmemMap
    default: .opaque
    }
  }

  public var replyLayout: PayloadLayout? {
    switch self {
    case .sharedObjectLookup: .u64
    default: nil
    }
  }

  public var requestFDs: FDRule {
    switch self {
    case .vringHostNotifier: .upTo(1)
    case .shmemMap: .exactly(1)
    default: isKnown ? .none : .ignored(upTo: 32)
    }
  }

  public var replyFDs: FDRule {
    switch self {
    case .sharedObjectLookup: .upTo(1)
    default: .none
    }
  }
}
