import VhostProtocol

/// What must be negotiated before a front-end may send a request.
enum RequestGate {
  case none
  /// Virtio feature bit 30 offered by the back-end.
  case protocolFeaturesBit
  case protocolFeature(ProtocolFeatures)
  /// A virtio feature that must have been acknowledged with SET_FEATURES.
  case ackedVirtioFeature(VirtioFeatures, String)

  static func gate(for request: FrontendRequest) -> RequestGate {
    switch request {
    case .getProtocolFeatures, .setProtocolFeatures, .setVringEnable: .protocolFeaturesBit
    case .getQueueNum: .protocolFeature(.mq)
    case .setLogBase: .protocolFeature(.logShmfd)
    case .sendRARP: .protocolFeature(.rarp)
    case .netSetMTU: .protocolFeature(.mtu)
    case .setBackendReqFD: .protocolFeature(.backendReq)
    case .setVringEndian: .protocolFeature(.crossEndian)
    case .getConfig, .setConfig: .protocolFeature(.config)
    case .createCryptoSession, .closeCryptoSession: .protocolFeature(.cryptoSession)
    case .postcopyAdvise, .postcopyListen, .postcopyEnd: .protocolFeature(.pagefault)
    case .getInflightFD, .setInflightFD: .protocolFeature(.inflightShmfd)
    case .resetDevice: .protocolFeature(.resetDevice)
    case .vringKick: .protocolFeature(.inbandNotifications)
    case .getMaxMemSlots, .addMemReg, .remMemReg: .protocolFeature(.configureMemSlots)
    case .setStatus, .getStatus: .protocolFeature(.status)
    case .getSharedObject: .protocolFeature(.sharedObject)
    case .setDeviceStateFD, .checkDeviceState: .protocolFeature(.deviceState)
    case .getShmemConfig: .protocolFeature(.shmem)
    case .getVringBaseSkipDrain: .protocolFeature(.getVringBaseSkipDrain)
    case .iotlbMsg: .ackedVirtioFeature(.accessPlatform, "VIRTIO_F_ACCESS_PLATFORM")
    default: .none
    }
  }
}
