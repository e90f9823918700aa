import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTransport
import Virtqueue

extension ConformanceChecker {
  static let survivalClause =
    "; the back-end may refuse it or close that connection (\"if the back-end detects some error … it may also "
    + "close the connection\") but must survive: a new connection is accepted and GET_FEATURES answered"

  /// One malformed-message probe: how much set-up it needs, and what it sends.
  struct Probe {
    enum Setup { case none, negotiated, memory }
    let name: String
    let rule: Rule
    let setup: Setup
    /// Sends the probe; returns what was sent (the reaction is observed afterwards).
    let send: (Session, DriverMemory?) throws(CheckFailure) -> String
  }

  var probes: [Probe] {
    let c = Self.survivalClause
    return [
      Probe(
        name: "robustness.version-2",
        rule: Rule(
          "the lower 2 bits of flags are the version (currently 0x01): a version-2 header is invalid\(c)",
          "Message Specification › Header"), setup: .none
      ) { s, _ throws(CheckFailure) in
        try s.sendRaw(
          MessageHeader(request: 1, flags: HeaderFlags(rawValue: 0x2), size: 0).encoded(), what: "GET_FEATURES v2")
        return "GET_FEATURES with flags 0x2 (version 2)"
      },
      Probe(
        name: "robustness.reserved-flags",
        rule: Rule(
          "flag bits above bit 3 are reserved: a request with them set is invalid\(c)",
          "Message Specification › Header"), setup: .none
      ) { s, _ throws(CheckFailure) in
        try s.sendRaw(
          MessageHeader(request: 1, flags: HeaderFlags(rawValue: 0xffff_fff1), size: 0).encoded(),
          what: "GET_FEATURES with reserved flags")
        return "GET_FEATURES with flags 0xfffffff1 (reserved bits 4–31 set)"
      },
      Probe(
        name: "robustness.fd-on-get-features",
        rule: Rule(
          "GET_FEATURES is not among the messages sent with file descriptors; an attached fd is unexpected\(c)",
          "Communication"), setup: .none
      ) { s, _ throws(CheckFailure) in
        let fd: EventFD
        do { fd = try EventFD() } catch { throw CheckFailure("\(error)") }
        try s.send(.getFeatures, fds: [fd.fd])
        return "GET_FEATURES with an eventfd attached"
      },
      Probe(
        name: "robustness.unknown-request",
        rule: Rule(
          "request codes are defined by the specification; an unknown code (9999) is invalid\(c)",
          "Front-end message types"), setup: .negotiated
      ) { s, _ throws(CheckFailure) in
        try s.sendRaw(
          MessageHeader(request: 9999, flags: s.replyAck ? [.version1, .needReply] : .version1, size: 8).encoded()
            + [UInt8](repeating: 0, count: 8), what: "request 9999")
        return "request code 9999 with an 8-byte payload" + (s.replyAck ? " and NEED_REPLY" : "")
      },
      Probe(
        name: "robustness.size-0xffffffff",
        rule: Rule(
          "size is the payload size; 0xffffffff exceeds every payload (QEMU's union is at most a few "
            + "hundred bytes)\(c)", "Message Specification › Header"), setup: .none
      ) { s, _ throws(CheckFailure) in
        try s.sendRaw(
          MessageHeader(request: 2, flags: .version1, size: 0xffff_ffff).encoded() + [UInt8](repeating: 0, count: 8),
          what: "SET_FEATURES of size 0xffffffff")
        return "SET_FEATURES with size 0xffffffff (followed by 8 bytes)"
      },
      Probe(
        name: "robustness.mem-table-9-regions",
        rule: Rule(
          "SET_MEM_TABLE carries at most 8 regions (region0 … region7), one fd each: nregions 9 is "
            + "invalid\(c)", "Message Specification › Memory regions description"), setup: .negotiated
      ) { s, _ throws(CheckFailure) in
        let m: SharedMemory
        var fds: [OwnedFD] = []
        do {
          m = try SharedMemory(anonymous: "vhost-user-check-9", size: 9 << 16)
          for _ in 0..<8 { fds.append(try m.fd.duplicate()) }
        } catch { throw CheckFailure("\(error)") }
        var w = ByteWriter()
        w.write(UInt32(9))
        w.write(UInt32(0))
        for i in 0..<9 {
          let off = UInt64(i) << 16
          w.write(0x1_0000_0000 + off)  // guest address
          w.write(UInt64(1) << 16)  // size
          w.write(m.address + off)  // user address
          w.write(off)  // mmap offset
        }
        let flags: HeaderFlags = s.replyAck ? [.version1, .needReply] : .version1
        try s.sendRaw(
          MessageHeader(request: 5, flags: flags, size: UInt32(w.bytes.count)).encoded() + w.bytes, fds: fds,
          what: "SET_MEM_TABLE with 9 regions")
        withExtendedLifetime(m) {}
        return "SET_MEM_TABLE with nregions 9 (296-byte payload, 8 fds)"
      },
      Probe(
        name: "robustness.vring-num-0",
        rule: Rule(
          "SET_VRING_NUM sets the queue size; 0 is not a valid virtqueue size\(c)",
          "VHOST_USER_SET_VRING_NUM"), setup: .memory
      ) { s, memory throws(CheckFailure) in
        try self.badRing(s, memory!, num: 0)
      },
      Probe(
        name: "robustness.vring-num-65536",
        rule: Rule(
          "SET_VRING_NUM sets the queue size; 65536 exceeds the largest virtqueue (32768)\(c)",
          "VHOST_USER_SET_VRING_NUM"), setup: .memory
      ) { s, memory throws(CheckFailure) in
        try self.badRing(s, memory!, num: 65536)
      },
      Probe(
        name: "robustness.ring-outside-memory",
        rule: Rule(
          "ring addresses are user addresses that map into the memory regions; a ring outside every "
            + "region cannot be used\(c)", "Memory access; VHOST_USER_SET_VRING_ADDR"), setup: .memory
      ) { s, memory throws(CheckFailure) in
        try self.badRing(s, memory!, num: 128, outside: true)
      },
    ]
  }

  /// Configures ring 0 with `num` (and addresses outside memory if asked), starts it, publishes a
  /// request and kicks: a back-end that accepted the bad value would process it now. Each reply
  /// (with NEED_REPLY) is noted; a closed connection ends the sequence.
  func badRing(_ s: Session, _ memory: DriverMemory, num: UInt32, outside: Bool = false) throws(CheckFailure)
    -> String
  {
    let ring = try TestRing(index: 0, in: memory)
    var address = ring.address
    if outside {
      let far = memory.memory.address &+ (1 << 40)
      address = VringAddress(index: 0, desc: far, used: far &+ 0x4000, avail: far &+ 0x2000)
    }
    let what =
      outside
      ? "ring 0 with desc/avail/used 1 TiB past the memory region, then started, a request published and kicked"
      : "SET_VRING_NUM \(num) on ring 0, then the ring set up, started, a request published and kicked"
    var notes: [String] = []
    let steps: [(FrontendRequest, Payload, [OwnedFD])] = [
      (.setVringNum, .vringState(VringState(index: 0, num: num)), []),
      (.setVringBase, .vringState(VringState(index: 0, num: 0)), []),
      (.setVringAddr, .vringAddress(address), []),
      (.setVringCall, .u64(0), [ring.call.fd]),
      (.setVringKick, .u64(0), [ring.kick.fd]),
    ]
    for (code, payload, fds) in steps {
      do {
        if let status = try s.command(code, payload: payload, fds: fds) {
          notes.append("\(code.name) \(status == 0 ? "acked 0" : "refused (\(status))")")
        }
      } catch {
        notes.append("stopped at \(code.name): \(error)")
        return what + " (" + notes.joined(separator: "; ") + ")"
      }
    }
    try? s.enable(0, true)
    if let device = resolvedDevice, device != .net {
      try? workload(for: device, s).submit(on: ring)
    } else {
      _ = try? ring.publish([(ring.nextBuffer, 64, true)])
    }
    ring.notify()
    return what + (notes.isEmpty ? "" : " (" + notes.joined(separator: "; ") + ")")
  }

  /// What the back-end did with a probe.
  enum Reaction {
    case replied(RawMessage)
    case closed
    case silent
    case invalid(String)
  }

  /// Waits for the back-end's reaction to a probe: `milliseconds` (default: the quiet window).
  func observe(_ s: Session, milliseconds: Int? = nil) -> Reaction {
    do {
      return .replied(try s.channel.receiveRaw(waitMilliseconds: milliseconds ?? quietWindow))
    } catch {
      switch error {
      case .transport(.timeout): return .silent
      case .transport(.disconnected), .transport(.disconnectedMidMessage): return .closed
      default: return .invalid("\(error)")
      }
    }
  }

  func describe(_ r: Reaction, waited: Int) -> String {
    switch r {
    case .replied(let raw):
      let h = raw.header
      return "it answered \(FrontendRequest(rawValue: h.request).name) (flags \(hex(h.flags.rawValue)), "
        + "\(raw.body.count) bytes\(raw.body.count == 8 ? ", u64 \(Session.u64(raw.body))" : ""))"
    case .closed: return "it closed the connection"
    case .silent: return "no reply within \(waited) ms"
    case .invalid(let e): return "its reply was invalid: \(e)"
    }
  }

  static let failureStatusRule = Rule(
    "with REPLY_ACK and need_reply the payload is zero on success, non-zero on failure: a request the back-end "
      + "cannot perform (here the undefined code 9999) is answered non-zero (or the connection is closed)",
    "VHOST_USER_PROTOCOL_F_REPLY_ACK")

  /// The REPLY_ACK status of the unknown-request probe.
  func recordFailureStatus(_ r: Reaction, replyAck: Bool) {
    let name = "reply-ack.failure-status"
    let rule = Self.failureStatusRule
    guard replyAck else {
      skip(name, rule, "VHOST_USER_PROTOCOL_F_REPLY_ACK not offered")
      return
    }
    switch r {
    case .replied(let raw):
      if let p = Session.validate(raw, replyTo: FrontendRequest(rawValue: 9999), size: 8) {
        fail(name, rule, "request 9999 with NEED_REPLY: \(p)")
      } else if Session.u64(raw.body) == 0 {
        fail(
          name, rule,
          "request 9999 (undefined) with NEED_REPLY was acked with 0: success reported for a request "
            + "that cannot have been performed")
      } else {
        pass(name, rule, "request 9999 with NEED_REPLY: REPLY_ACK status \(Session.u64(raw.body))")
      }
    case .closed: pass(name, rule, "request 9999 with NEED_REPLY: the back-end closed the connection")
    case .silent: fail(name, rule, "request 9999 with NEED_REPLY: no REPLY_ACK within \(timeoutMilliseconds) ms")
    case .invalid(let e): fail(name, rule, "request 9999 with NEED_REPLY: invalid reply: \(e)")
    }
  }

  /// nil if the back-end accepts a new connection and answers GET_FEATURES as before.
  func survives() -> String? {
    do {
      let s = try open()
      defer { s.close() }
      let raw = try s.call(.getFeatures, replySize: 8)
      if let (f, _) = firstOffer, Session.u64(raw.body) != f.rawValue {
        return "a new connection's GET_FEATURES answered \(hex(Session.u64(raw.body))), before \(hex(f.rawValue))"
      }
      return nil
    } catch {
      return "afterwards: \(error)"
    }
  }

  func robustnessChecks() {
    var dead: String?
    var pendingStatus: Reaction?
    for p in probes {
      if let dead {
        skip(p.name, p.rule, "not run: \(dead)")
        continue
      }
      var sent = ""
      var reaction = ""
      var replyAck = false
      do {
        let s = try open()
        defer { s.close() }
        var memory: DriverMemory?
        switch p.setup {
        case .none: break
        case .negotiated:
          try s.negotiate()
          try s.own(device: resolvedDevice)
        case .memory:
          try s.negotiate()
          try s.own(device: resolvedDevice)
          let m: DriverMemory
          do { m = try DriverMemory(size: 1 << 20, name: "vhost-user-check") } catch {
            throw CheckFailure("\(error)")
          }
          try s.setMemTable(m)
          memory = m
        }
        sent = try p.send(s, memory)
        // With NEED_REPLY a reply is due: wait the full timeout for it (a slow back-end is not silent).
        let expectsReply = p.name == "robustness.unknown-request" && s.replyAck
        let wait = expectsReply ? timeoutMilliseconds : quietWindow
        let r = observe(s, milliseconds: wait)
        reaction = describe(r, waited: wait)
        replyAck = s.replyAck
        if p.name == "robustness.unknown-request" {
          // Judged after survival (below), so the order of results stays probe, then its status.
          pendingStatus = r
        }
      } catch {
        // The set-up failed: the back-end is not in a state to test (or already gone).
        if let gone = survives() {
          fail(p.name, p.rule, "could not set up the probe (\(error)); \(gone)")
          dead = "the back-end stopped serving connections (\(p.name))"
        } else {
          fail(p.name, p.rule, "could not set up the probe: \(error)")
        }
        continue
      }
      if let gone = survives() {
        fail(p.name, p.rule, "sent \(sent): \(reaction); the back-end did not survive — \(gone)")
        dead = "the back-end stopped serving connections after \(p.name)"
      } else {
        pass(p.name, p.rule, "sent \(sent): \(reaction); a new connection was served")
      }
      if let r = pendingStatus {
        recordFailureStatus(r, replyAck: replyAck)
        pendingStatus = nil
      }
    }
  }
}
