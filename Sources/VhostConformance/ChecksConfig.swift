import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTransport
import Virtqueue

extension ConformanceChecker {
  static let getConfigRule = Rule(
    "GET_CONFIG: the back-end's payload size MUST match the front-end's request (same offset; zero length only "
      + "to indicate an error)", "Front-end message types › VHOST_USER_GET_CONFIG")
  static let configFieldsRule = Rule(
    "the config space read is the device's: virtio-blk capacity in 512-byte sectors (non-zero), blk_size a power "
      + "of two ≥ 512 with BLK_SIZE; virtio-net mac unicast with NET_F_MAC, mtu ≥ 68 with NET_F_MTU",
    "VHOST_USER_GET_CONFIG; VIRTIO 1.x device configuration layouts")
  static let configOffsetRule = Rule(
    "the config space message's offset is an offset into the device's configuration space: a read at offset o "
      + "returns the bytes at o", "Message Specification › Virtio device config space; VHOST_USER_GET_CONFIG")
  static let setReadOnlyRule = Rule(
    "back-ends MUST NOT accept SET_CONFIG for read-only configuration space fields unless the live migration "
      + "bit is set", "Front-end message types › VHOST_USER_SET_CONFIG")

  func configChecks() {
    let names: [(String, Rule)] = [
      ("config.get-config", Self.getConfigRule), ("config.fields", Self.configFieldsRule),
      ("config.offset", Self.configOffsetRule), ("config.set-read-only", Self.setReadOnlyRule),
    ]
    let s: Session
    do {
      s = try ownedSession()
    } catch {
      fail(names[0].0, names[0].1, "could not set up the connection: \(error)")
      notRun(Array(names.dropFirst()), because: "setup failed")
      return
    }
    defer { s.close() }
    guard s.protocolAcked.contains(.config) else {
      for (n, r) in names { skip(n, r, "VHOST_USER_PROTOCOL_F_CONFIG not offered") }
      return
    }
    guard let device = resolvedDevice else {
      notRun(names, because: "device type unknown (pass --device blk|net|rng)")
      return
    }
    let size = Self.configSize(device)
    guard size > 0 else {
      for (n, r) in names { skip(n, r, "the rng device has no config space") }
      return
    }
    var space: [UInt8] = []
    let readOK = check(names[0].0, names[0].1) { () throws(CheckFailure) -> String in
      space = try readConfig(s, size: size)
      return "asked \(size) bytes at offset 0: reply of 12 + \(size) bytes, size \(size), offset 0"
    }
    guard readOK else {
      notRun(Array(names.dropFirst()), because: "GET_CONFIG failed")
      return
    }

    check(names[1].0, names[1].1) { () throws(CheckFailure) -> String in
      switch device {
      case .blk:
        let c: BlkConfig
        do { c = try BlkConfig(bytes: space) } catch { throw CheckFailure("\(error)") }
        guard c.capacity > 0, c.capacity < 1 << 54 else {
          throw CheckFailure("capacity \(c.capacity) sectors is implausible")
        }
        if s.offered.contains(VirtioFeatures(bit: 6)) {
          guard c.blkSize >= 512, c.blkSize & (c.blkSize - 1) == 0 else {
            throw CheckFailure("BLK_SIZE offered but blk_size is \(c.blkSize)")
          }
        }
        return "capacity \(c.capacity) sectors (\(c.capacity * 512) bytes), blk_size \(c.blkSize)"
      case .net:
        let c: NetConfig
        do { c = try NetConfig(bytes: space) } catch { throw CheckFailure("\(error)") }
        if s.offered.contains(VirtioFeatures(bit: 5)) {
          guard c.mac.contains(where: { $0 != 0 }), c.mac[0] & 1 == 0 else {
            throw CheckFailure("NET_F_MAC offered but the mac \(c.macString) is not a unicast address")
          }
        }
        if s.offered.contains(VirtioFeatures(bit: 3)) {
          guard c.mtu >= 68 else { throw CheckFailure("NET_F_MTU offered but mtu is \(c.mtu)") }
        }
        return "mac \(c.macString), status \(c.status), max_virtqueue_pairs \(c.maxVirtqueuePairs), mtu \(c.mtu)"
      case .rng:
        return "no fields"
      }
    }

    check(names[2].0, names[2].1) { () throws(CheckFailure) -> String in
      // blk: blk_size (offset 20, 4 bytes); net: status and max_virtqueue_pairs (offset 6, 4 bytes).
      let (offset, length) = device == .blk ? (20, 4) : (6, 4)
      let window = try readConfig(s, size: length, offset: UInt32(offset))
      let expected = Array(space[offset..<offset + length])
      guard window == expected else {
        let head = Array(space[0..<length])
        let hint = window == head ? " — the bytes at offset 0: the offset was ignored" : ""
        throw CheckFailure(
          "GET_CONFIG of \(length) bytes at offset \(offset) returned \(window), the full read has \(expected) "
            + "there\(hint)")
      }
      return "\(length) bytes at offset \(offset) equal the full read's bytes there (\(window))"
    }

    // A write to a read-only field (blk capacity, net mac) must be refused; run last (a back-end may
    // close the connection to refuse it).
    check(names[3].0, names[3].1) { () throws(CheckFailure) -> String in
      let (offset, length) = device == .blk ? (0, 8) : (0, 6)
      let range = offset..<offset + length
      var bytes = Array(space[range])
      bytes[0] ^= 0x02
      let what = device == .blk ? "capacity" : "mac"
      var status: UInt64?
      var closed = false
      do {
        status = try s.command(.setConfig, payload: .config(ConfigSpace(offset: UInt32(offset), bytes: bytes)))
      } catch {
        let text = "\(error)"
        guard text.contains("closed") else { throw CheckFailure(text) }
        closed = true
      }
      // Read it back, on a new connection if this one no longer answers.
      var after: [UInt8]
      var note = ""
      do {
        guard !closed else { throw CheckFailure("closed") }
        after = try readConfig(s, size: size)
      } catch {
        let f = try ownedSession()
        defer { f.close() }
        after = try readConfig(f, size: size)
        if !closed { note = " (the connection stopped answering afterwards: \(error))" }
      }
      let unchanged = Array(after[range]) == Array(space[range])
      guard unchanged else {
        throw CheckFailure(
          "SET_CONFIG changed the read-only \(what) (REPLY_ACK \(status.map(String.init) ?? "none"))\(note)")
      }
      if closed { return "refused by closing the connection; GET_CONFIG shows the \(what) unchanged" }
      guard let status else {
        return "no REPLY_ACK negotiated; GET_CONFIG shows the \(what) unchanged (the write was ignored)"
      }
      guard status != 0 else {
        throw CheckFailure(
          "the write of the read-only \(what) was not applied, but REPLY_ACK reported success (0): a refusal "
            + "must be a non-zero status (REPLY_ACK: \"zero on success or non-zero on failure\")\(note)")
      }
      return "refused with REPLY_ACK status \(status); GET_CONFIG shows the \(what) unchanged\(note)"
    }
  }
}
