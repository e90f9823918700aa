import VhostFrontend
import VhostProtocol
import VhostSystem
import Virtqueue

extension ConformanceChecker {
  static let replyAckRule = Rule(
    "with REPLY_ACK negotiated the front-end may set need_reply on any request; the back-end MUST respond with a "
      + "u64 payload, zero on success and non-zero on failure (a reply: flags 0x5, the same request code, size 8)",
    "VHOST_USER_PROTOCOL_F_REPLY_ACK")

  /// Every request without a reply of its own that the checker sends, with NEED_REPLY, on one
  /// connection, in the order a front-end brings a device up.
  func replyAckChecks() {
    let rule = Self.replyAckRule
    let s: Session
    do {
      s = try open()
      try s.negotiate()
    } catch {
      fail("reply-ack", rule, "could not set up the connection: \(error)")
      return
    }
    defer { s.close() }
    guard s.replyAck else {
      skip("reply-ack", rule, "VHOST_USER_PROTOCOL_F_REPLY_ACK not offered")
      return
    }
    let memory: DriverMemory
    let ring: TestRing
    let err: EventFD
    do {
      memory = try DriverMemory(size: 1 << 20, name: "vhost-user-check")
      ring = try TestRing(index: 0, in: memory)
      err = try EventFD()
    } catch {
      fail("reply-ack", rule, "local setup failed: \(error)")
      return
    }
    let device = resolvedDevice
    let features = s.wantedFeatures(device: device)
    let fullStatus = UInt64(DeviceStatus.acknowledge | DeviceStatus.driver | DeviceStatus.featuresOK)

    /// (request, payload, fds, whether any status is acceptable, explanation of a skip)
    var steps: [(FrontendRequest, Payload, [OwnedFD], Bool, String?)] = [
      (.setOwner, .empty, [], false, nil),
      (.setFeatures, .u64(features.rawValue), [], false, nil),
      (
        .setStatus, .u64(fullStatus), [], false,
        s.protocolAcked.contains(.status) ? nil : "VHOST_USER_PROTOCOL_F_STATUS not offered"
      ),
      (.setMemTable, .memoryTable(MemoryTable(regions: [memory.wireRegion])), [memory.memory.fd], false, nil),
      (.setVringNum, .vringState(VringState(index: 0, num: UInt32(ring.size))), [], false, nil),
      (.setVringBase, .vringState(VringState(index: 0, num: 0)), [], false, nil),
      (.setVringAddr, .vringAddress(ring.address), [], false, nil),
      (.setVringCall, .u64(0), [ring.call.fd], false, nil),
      (.setVringErr, .u64(0), [err.fd], false, nil),
      (.setVringKick, .u64(0), [ring.kick.fd], false, nil),
      (
        .setVringEnable, .vringState(VringState(index: 0, num: 1)), [], false,
        features.contains(.protocolFeatures) ? nil : "VHOST_USER_F_PROTOCOL_FEATURES not negotiated"
      ),
    ]
    // SET_CONFIG writes back what GET_CONFIG read (a writable field for blk: wce); a refusal is
    // acceptable (read-only fields), any well-formed ack passes.
    // (The payload is filled in when the step is reached.)
    let configSkip: String? =
      if !s.protocolAcked.contains(.config) {
        "VHOST_USER_PROTOCOL_F_CONFIG not offered"
      } else if let d = device {
        Self.configSize(d) > 0 ? nil : "the \(d.rawValue) device has no config space"
      } else {
        "device type unknown"
      }
    steps.append((.setConfig, .empty, [], true, configSkip))
    let netMTU = VirtioFeatures(bit: 3)
    steps.append(
      (
        .netSetMTU, .u64(1500), [], false,
        device != .net
          ? "not a net device"
          : !s.protocolAcked.contains(.mtu)
            ? "VHOST_USER_PROTOCOL_F_MTU not offered"
            : !features.contains(netMTU) ? "VIRTIO_NET_F_MTU not offered" : nil
      ))
    var channelEnd: UnixSocket?
    var backendFD: [OwnedFD] = []
    if s.protocolAcked.contains(.backendReq), let (mine, theirs) = try? UnixSocket.pair() {
      channelEnd = mine
      backendFD = [theirs.fd]
    }
    steps.append(
      (
        .setBackendReqFD, .empty, backendFD, false,
        s.protocolAcked.contains(.backendReq) ? nil : "VHOST_USER_PROTOCOL_F_BACKEND_REQ not offered"
      ))

    var broken: String?
    for (code, payload0, fds, anyStatus, skipReason) in steps {
      let name = "reply-ack.\(code.name)"
      if let skipReason {
        skip(name, rule, skipReason)
        continue
      }
      if let broken {
        skip(name, rule, "not run: \(broken)")
        continue
      }
      var payload = payload0
      if code == .setConfig, let d = device {
        // Write back the current bytes of a field: blk wce (offset 32, 1 byte), net mac (6 bytes).
        let (offset, length) = d == .blk ? (32, 1) : (0, 6)
        do {
          let current = try readConfig(s, size: Self.configSize(d))
          payload = .config(ConfigSpace(offset: UInt32(offset), bytes: Array(current[offset..<offset + length])))
        } catch {
          fail(name, rule, "GET_CONFIG before it failed: \(error)")
          broken = "GET_CONFIG failed"
          continue
        }
      }
      do {
        guard let status = try s.command(code, payload: payload, fds: fds, ack: true) else { continue }
        if status == 0 {
          pass(name, rule, "u64 0, flags 0x5")
        } else if anyStatus {
          pass(name, rule, "u64 \(status) (a refusal; rewriting a config field with its own value may be refused)")
        } else {
          fail(name, rule, "the back-end answered a valid \(code.name) with failure status \(status)")
        }
      } catch {
        fail(name, rule, error.description)
        broken = "\(code.name) got no valid REPLY_ACK"
      }
    }
    withExtendedLifetime(channelEnd) {}
  }

  /// GET_CONFIG of `size` bytes at offset 0 (explicit reply; validated).
  func readConfig(_ s: Session, size: Int, offset: UInt32 = 0) throws(CheckFailure) -> [UInt8] {
    let req = ConfigSpace(offset: offset, bytes: [UInt8](repeating: 0, count: size))
    let raw = try s.call(.getConfig, payload: .config(req), replySize: nil)
    var r = ByteReader(raw.body)
    guard raw.body.count >= 12 else { throw CheckFailure("GET_CONFIG reply of \(raw.body.count) bytes") }
    let off: UInt32 = (try? r.read()) ?? 0
    let sz: UInt32 = (try? r.read()) ?? 0
    _ = try? r.read(UInt32.self)
    guard raw.body.count == 12 + size, Int(sz) == size, off == offset else {
      throw CheckFailure(
        "GET_CONFIG of \(size) bytes at offset \(offset) answered \(raw.body.count - 12) payload bytes, size field "
          + "\(sz), offset \(off)")
    }
    return Array(raw.body[12...])
  }
}
