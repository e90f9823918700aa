/// vhost-user protocol feature bits (`VHOST_USER_PROTOCOL_F_*`), 0–23.
public struct ProtocolFeatures: OptionSet, Hashable, Sendable, CustomStringConvertible {
  public let rawValue: UInt64
  public init(rawValue: UInt64) { self.rawValue = rawValue }
  public init(bit: Int) { rawValue = 1 << UInt64(bit) }

  public static let mq = Self(bit: 0)
  public static let logShmfd = Self(bit: 1)
  public static let rarp = Self(bit: 2)
  public static let replyAck = Self(bit: 3)
  public static let mtu = Self(bit: 4)
  public static let backendReq = Self(bit: 5)
  public static let crossEndian = Self(bit: 6)
  public static let cryptoSession = Self(bit: 7)
  public static let pagefault = Self(bit: 8)
  public static let config = Self(bit: 9)
  public static let backendSendFD = Self(bit: 10)
  public static let hostNotifier = Self(bit: 11)
  public static let inflightShmfd = Self(bit: 12)
  public static let resetDevice = Self(bit: 13)
  public static let inbandNotifications = Self(bit: 14)
  public static let configureMemSlots = Self(bit: 15)
  public static let status = Self(bit: 16)
  public static let xenMmap = Self(bit: 17)
  public static let sharedObject = Self(bit: 18)
  public static let deviceState = Self(bit: 19)
  public static let getVringBaseInflight = Self(bit: 20)
  public static let gpaAddresses = Self(bit: 21)
  public static let shmem = Self(bit: 22)
  public static let getVringBaseSkipDrain = Self(bit: 23)

  /// The spec's names, indexed by bit.
  public static let bitNames: [String] = [
    "MQ", "LOG_SHMFD", "RARP", "REPLY_ACK", "MTU", "BACKEND_REQ", "CROSS_ENDIAN", "CRYPTO_SESSION",
    "PAGEFAULT", "CONFIG", "BACKEND_SEND_FD", "HOST_NOTIFIER", "INFLIGHT_SHMFD", "RESET_DEVICE",
    "INBAND_NOTIFICATIONS", "CONFIGURE_MEM_SLOTS", "STATUS", "XEN_MMAP", "SHARED_OBJECT", "DEVICE_STATE",
    "GET_VRING_BASE_INFLIGHT", "GPA_ADDRESSES", "SHMEM", "GET_VRING_BASE_SKIP_DRAIN",
  ]

  /// Every bit the specification defines.
  public static let allDefined = Self(rawValue: (1 << 24) - 1)

  /// The seeds' protocol features (MQ, LOG_SHMFD, RARP, REPLY_ACK, MTU).
  public static let seedSet: Self = [.mq, .logShmfd, .rarp, .replyAck, .mtu]

  /// Names of the set bits; unknown bits print as `bit N`.
  public var names: [String] {
    (0..<64).compactMap { bit in
      guard rawValue & (1 << UInt64(bit)) != 0 else { return nil }
      return bit < Self.bitNames.count ? Self.bitNames[bit] : "bit \(bit)"
    }
  }

  public var description: String { "0x" + String(rawValue, radix: 16) + " [" + names.joined(separator: ", ") + "]" }
}

/// Virtio feature bits as exchanged by GET/SET_FEATURES.
public struct VirtioFeatures: OptionSet, Hashable, Sendable {
  public let rawValue: UInt64
  public init(rawValue: UInt64) { self.rawValue = rawValue }
  public init(bit: Int) { rawValue = 1 << UInt64(bit) }

  public static let notifyOnEmpty = Self(bit: 24)
  public static let anyLayout = Self(bit: 27)
  public static let indirectDesc = Self(bit: 28)
  public static let eventIdx = Self(bit: 29)
  /// `VHOST_USER_F_PROTOCOL_FEATURES`: gates GET/SET_PROTOCOL_FEATURES and SET_VRING_ENABLE.
  public static let protocolFeatures = Self(bit: 30)
  /// `VHOST_F_LOG_ALL`.
  public static let logAll = Self(bit: 26)
  public static let version1 = Self(bit: 32)
  public static let accessPlatform = Self(bit: 33)
  public static let ringPacked = Self(bit: 34)
  public static let inOrder = Self(bit: 35)
  public static let orderPlatform = Self(bit: 36)
  public static let srIOV = Self(bit: 37)
  public static let notificationData = Self(bit: 38)
  public static let ringReset = Self(bit: 40)

  static let transportNames: [Int: String] = [
    24: "NOTIFY_ON_EMPTY", 26: "LOG_ALL", 27: "ANY_LAYOUT", 28: "RING_INDIRECT_DESC", 29: "RING_EVENT_IDX",
    30: "PROTOCOL_FEATURES", 32: "VERSION_1", 33: "ACCESS_PLATFORM", 34: "RING_PACKED", 35: "IN_ORDER",
    36: "ORDER_PLATFORM", 37: "SR_IOV", 38: "NOTIFICATION_DATA", 39: "NOTIF_CONFIG_DATA", 40: "RING_RESET",
  ]

  /// Names of the set bits, decoding device-specific bits (0–23, 41+) for the given device type.
  public func names(for device: VirtioDeviceType? = nil) -> [String] {
    (0..<64).compactMap { bit in
      guard rawValue & (1 << UInt64(bit)) != 0 else { return nil }
      if let n = Self.transportNames[bit] { return n }
      if let n = device?.featureNames[bit] { return n }
      return "bit \(bit)"
    }
  }
}

/// Virtio device types this project knows by name.
public enum VirtioDeviceType: String, Sendable, CaseIterable {
  case net, blk, rng

  /// Infers the device type from offered feature bits, or nil. Device bits overlap between types
  /// (bit 5 is NET_F_MAC and BLK_F_RO, bit 9 NET_F_GUEST_ECN and BLK_F_FLUSH, ...), so the bits that
  /// settle it come first: CSUM (0), MRG_RXBUF (15) or CTRL_VQ (17) mean net (their blk namesakes —
  /// legacy BARRIER, LIFETIME, ZONED — are rare); then SEG_MAX, BLK_SIZE, FLUSH or TOPOLOGY
  /// (2, 6, 9, 10) mean blk; then MAC or STATUS (5, 16) mean net. rng has no bits of its own.
  public init?(inferringFrom features: VirtioFeatures) {
    func any(_ bits: [Int]) -> Bool { bits.contains { features.contains(VirtioFeatures(bit: $0)) } }
    if any([0, 15, 17]) {
      self = .net
    } else if any([2, 6, 9, 10]) {
      self = .blk
    } else if any([5, 16]) {
      self = .net
    } else {
      return nil
    }
  }

  /// Names of device-specific feature bits.
  public var featureNames: [Int: String] {
    switch self {
    case .blk:
      [
        1: "BLK_SIZE_MAX", 2: "BLK_SEG_MAX", 4: "BLK_GEOMETRY", 5: "BLK_RO", 6: "BLK_BLK_SIZE", 7: "BLK_SCSI",
        9: "BLK_FLUSH", 10: "BLK_TOPOLOGY", 11: "BLK_CONFIG_WCE", 12: "BLK_MQ", 13: "BLK_DISCARD",
        14: "BLK_WRITE_ZEROES", 15: "BLK_LIFETIME", 16: "BLK_SECURE_ERASE", 17: "BLK_ZONED",
      ]
    case .net:
      [
        0: "NET_CSUM", 1: "NET_GUEST_CSUM", 2: "NET_CTRL_GUEST_OFFLOADS", 3: "NET_MTU", 5: "NET_MAC",
        6: "NET_GSO", 7: "NET_GUEST_TSO4", 8: "NET_GUEST_TSO6", 9: "NET_GUEST_ECN", 10: "NET_GUEST_UFO",
        11: "NET_HOST_TSO4", 12: "NET_HOST_TSO6", 13: "NET_HOST_ECN", 14: "NET_HOST_UFO", 15: "NET_MRG_RXBUF",
        16: "NET_STATUS", 17: "NET_CTRL_VQ", 18: "NET_CTRL_RX", 19: "NET_CTRL_VLAN", 20: "NET_CTRL_RX_EXTRA",
        21: "NET_GUEST_ANNOUNCE", 22: "NET_MQ", 23: "NET_CTRL_MAC_ADDR", 54: "NET_HOST_USO",
        55: "NET_HASH_REPORT", 56: "NET_GUEST_HDRLEN", 57: "NET_RSS", 58: "NET_RSC_EXT", 59: "NET_STANDBY",
        60: "NET_SPEED_DUPLEX",
      ]
    case .rng: [:]
    }
  }
}
