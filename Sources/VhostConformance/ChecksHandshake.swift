import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTransport
import Virtqueue

extension ConformanceChecker {
  static let connectRule = Rule(
    "the back-end listens on its socket and answers GET_FEATURES", "Introduction; VHOST_USER_GET_FEATURES")
  static let featuresReplyRule = Rule(
    "every reply has version 1 and the reply flag (bit 2) set — flags exactly 0x5 — and GET_FEATURES replies "
      + "with a u64 (size 8)", "Message Specification › Header; VHOST_USER_GET_FEATURES")
  static let protocolBeforeSetFeaturesRule = Rule(
    "back-ends that report VHOST_USER_F_PROTOCOL_FEATURES (bit 30) must support GET_PROTOCOL_FEATURES even "
      + "before VHOST_USER_SET_FEATURES was called", "Front-end message types › VHOST_USER_GET_PROTOCOL_FEATURES")
  static let setProtocolRule = Rule(
    "SET_PROTOCOL_FEATURES enables the protocol features the front-end acknowledges — the offer masked by its "
      + "own — and must be supported before SET_FEATURES", "Front-end message types › VHOST_USER_SET_PROTOCOL_FEATURES")
  static let queueNumRule = Rule(
    "with VHOST_USER_PROTOCOL_F_MQ, GET_QUEUE_NUM returns the maximum number of queues the back-end supports "
      + "(u64, at least 1)", "Multiple queue support; VHOST_USER_GET_QUEUE_NUM")
  static let memSlotsRule = Rule(
    "with CONFIGURE_MEM_SLOTS, GET_MAX_MEM_SLOTS returns a u64 with the maximum number of memory slots "
      + "(at least 1)", "Front-end message types › VHOST_USER_GET_MAX_MEM_SLOTS")
  static let explicitReplyRule = Rule(
    "for message types that already solicit a reply, need_reply brings no behavioural change: one reply, the "
      + "explicit one, and no extra ack", "VHOST_USER_PROTOCOL_F_REPLY_ACK")
  static let noUnsolicitedReplyRule = Rule(
    "most requests don't require replies: a request without a reply payload sent without need_reply gets no "
      + "reply", "Communication; VHOST_USER_PROTOCOL_F_REPLY_ACK")

  /// Handshake rules on one connection. Returns false when the back-end cannot be talked to at all.
  func handshakeChecks() -> Bool {
    let s: Session
    do {
      s = try open()
    } catch {
      fail("handshake.connect", Self.connectRule, error.description)
      return false
    }
    defer { s.close() }

    // GET_FEATURES, byte by byte.
    let raw: RawMessage
    do {
      try s.send(.getFeatures)
      raw = try s.receive()
    } catch {
      fail("handshake.get-features-reply", Self.featuresReplyRule, error.description)
      return false
    }
    s.offered = VirtioFeatures(rawValue: Session.u64(raw.body))
    resolvedDevice = device ?? Self.infer(s.offered)
    let deviceNote =
      resolvedDevice.map { device == nil ? "; device inferred as \($0.rawValue)" : "; device \($0.rawValue)" }
      ?? "; device type unknown (data-path checks will be skipped: pass --device)"
    if let problem = Session.validate(raw, replyTo: .getFeatures, size: 8) {
      fail("handshake.get-features-reply", Self.featuresReplyRule, problem)
    } else {
      pass(
        "handshake.get-features-reply", Self.featuresReplyRule,
        "flags 0x5, size 8, features \(hex(s.offered.rawValue))\(deviceNote)")
    }

    let later: [(String, Rule)] = [
      ("handshake.protocol-features-before-set-features", Self.protocolBeforeSetFeaturesRule),
      ("handshake.set-protocol-features", Self.setProtocolRule),
      ("handshake.get-queue-num", Self.queueNumRule),
      ("handshake.get-max-mem-slots", Self.memSlotsRule),
      ("handshake.need-reply-on-explicit-reply", Self.explicitReplyRule),
      ("handshake.no-reply-without-need-reply", Self.noUnsolicitedReplyRule),
    ]
    var ownerSent = false
    do {
      if s.bit30 {
        let offer = try s.u64(.getProtocolFeatures)
        s.protocolOffer = ProtocolFeatures(rawValue: offer)
        pass(
          later[0].0, later[0].1,
          "answered before SET_FEATURES (flags 0x5, size 8): \(s.protocolOffer)")

        // The masked set; acceptance shows in the next request being served (acked with REPLY_ACK).
        let use = s.protocolOffer.intersection(Session.supportedProtocolFeatures)
        try s.send(.setProtocolFeatures, payload: .u64(use.rawValue))
        s.protocolAcked = use
        let masked = "offer \(hex(offer)) ∩ ours \(hex(Session.supportedProtocolFeatures.rawValue)) = \(use)"
        do {
          if s.replyAck {
            ownerSent = true
            guard let status = try s.command(.setOwner), status == 0 else {
              throw CheckFailure("after SET_PROTOCOL_FEATURES(\(masked)), SET_OWNER was refused")
            }
            pass(later[1].0, later[1].1, "\(masked); in force: the next request (SET_OWNER) got a REPLY_ACK of 0")
          } else {
            try s.sync()
            pass(later[1].0, later[1].1, "\(masked); the connection stays in step (GET_FEATURES answered)")
          }
        } catch {
          fail(later[1].0, later[1].1, "\(masked): \(error)")
          throw error
        }
      } else {
        for (n, r) in later.prefix(2) { skip(n, r, "VHOST_USER_F_PROTOCOL_FEATURES (bit 30) not offered") }
      }

      if s.protocolAcked.contains(.mq) {
        check(later[2].0, later[2].1) { () throws(CheckFailure) -> String in
          let n = try s.u64(.getQueueNum)
          s.queueNum = n
          guard n >= 1 else { throw CheckFailure("GET_QUEUE_NUM answered 0") }
          return "\(n) queue(s)"
        }
      } else {
        skip(later[2].0, later[2].1, "VHOST_USER_PROTOCOL_F_MQ not offered")
      }

      if s.protocolAcked.contains(.configureMemSlots) {
        check(later[3].0, later[3].1) { () throws(CheckFailure) -> String in
          let n = try s.u64(.getMaxMemSlots)
          s.memSlots = n
          guard n >= 1 else { throw CheckFailure("GET_MAX_MEM_SLOTS answered 0") }
          return "\(n) slot(s)" + (n == 8 ? " (DPDK's value: VHOST_MEMORY_MAX_NREGIONS)" : "")
        }
      } else {
        skip(later[3].0, later[3].1, "VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS not offered")
      }

      if s.replyAck {
        check(later[4].0, later[4].1) { () throws(CheckFailure) -> String in
          try s.send(.getFeatures, flags: [.version1, .needReply])
          let r = try s.receive()
          if let p = Session.validate(r, replyTo: .getFeatures, size: 8) {
            let echoed =
              r.header.flags.contains(.needReply)
              ? " — the request's NEED_REPLY bit is echoed in the reply (QEMU's front-end refuses any reply whose "
                + "flags are not exactly 0x5)" : ""
            throw CheckFailure("reply to GET_FEATURES sent with NEED_REPLY: \(p)\(echoed)")
          }
          let v = Session.u64(r.body)
          guard v == s.offered.rawValue else {
            throw CheckFailure("GET_FEATURES with NEED_REPLY answered \(hex(v)) instead of the features")
          }
          // The next message must answer the next request, not be a second (ack) reply.
          try s.send(.getProtocolFeatures)
          let next = try s.receive()
          if let p = Session.validate(next, replyTo: .getProtocolFeatures, size: 8) {
            throw CheckFailure(
              "after GET_FEATURES with NEED_REPLY, the next message was not the reply to "
                + "GET_PROTOCOL_FEATURES: \(p)")
          }
          return "GET_FEATURES with NEED_REPLY: one reply (the features), then GET_PROTOCOL_FEATURES answered in step"
        }
      } else {
        skip(later[4].0, later[4].1, "VHOST_USER_PROTOCOL_F_REPLY_ACK not offered")
      }

      check(later[5].0, later[5].1) { () throws(CheckFailure) -> String in
        var sent: [String] = []
        if !ownerSent {
          try s.send(.setOwner)
          sent.append("SET_OWNER")
        }
        s.acked = s.wantedFeatures(device: resolvedDevice)
        try s.send(.setFeatures, payload: .u64(s.acked.rawValue))
        try s.send(.setVringNum, payload: .vringState(VringState(index: 0, num: 128)))
        try s.send(.setVringBase, payload: .vringState(VringState(index: 0, num: 0)))
        sent += ["SET_FEATURES", "SET_VRING_NUM", "SET_VRING_BASE"]
        try s.send(.getFeatures)
        let next = try s.receive()
        if let p = Session.validate(next, replyTo: .getFeatures, size: 8) {
          throw CheckFailure(
            "after \(sent.joined(separator: ", ")) without NEED_REPLY, the first message back "
              + "was not the reply to GET_FEATURES: \(p)")
        }
        return "\(sent.joined(separator: ", ")) sent without NEED_REPLY: no reply; GET_FEATURES answered next"
      }
    } catch {
      let done = Set(results.map(\.name))
      notRun(later.filter { !done.contains($0.0) }, because: "the connection failed: \(error)")
    }
    if firstOffer == nil { firstOffer = (s.offered, s.protocolOffer) }
    return true
  }
}
