import VhostFrontend
import VhostProtocol
import VhostSystem
import Virtqueue

extension ConformanceChecker {
  static let addRegRule = Rule(
    "with CONFIGURE_MEM_SLOTS, ADD_MEM_REG carries one region and exactly one fd, which the back-end must map; up "
      + "to the GET_MAX_MEM_SLOTS count are accepted (acked 0 with need_reply)", "VHOST_USER_ADD_MEM_REG")
  static let remRegRule = Rule(
    "REM_MEM_REG removes the region identified by its guest address, user address and size; no fd SHOULD be "
      + "passed (acked 0 with need_reply)", "VHOST_USER_REM_MEM_REG")
  static let memNoReplyRule = Rule(
    "outside postcopy, ADD_MEM_REG and REM_MEM_REG sent without need_reply get no reply (they are not in the "
      + "list of requests that require replies)", "Communication; VHOST_USER_ADD_MEM_REG; VHOST_USER_REM_MEM_REG")

  func memoryChecks() {
    let names: [(String, Rule)] = [
      ("memory.add-mem-reg", Self.addRegRule), ("memory.rem-mem-reg", Self.remRegRule),
      ("memory.no-reply-without-need-reply", Self.memNoReplyRule),
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
    guard s.protocolAcked.contains(.configureMemSlots) else {
      for (n, r) in names { skip(n, r, "VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS not offered") }
      return
    }
    let advertised = s.memSlots ?? 0
    let count = Int(min(advertised, 32))
    guard count > 0 else {
      notRun(names, because: "GET_MAX_MEM_SLOTS answered 0")
      return
    }
    var regions: [(MemoryRegion, SharedMemory)] = []
    do {
      for i in 0..<count {
        let m = try SharedMemory(anonymous: "vhost-user-check-slot\(i)", size: 64 << 10)
        let r = MemoryRegion(
          guestPhysAddr: 0x4000_0000 + UInt64(i) << 20, memorySize: UInt64(m.size), userAddr: m.address,
          mmapOffset: 0)
        regions.append((r, m))
      }
    } catch {
      fail(names[0].0, names[0].1, "local memory setup failed: \(error)")
      notRun(Array(names.dropFirst()), because: "setup failed")
      return
    }
    let how =
      s.replyAck ? "each acked 0" : "no REPLY_ACK: acceptance inferred from the connection staying in step"
    let added = check(names[0].0, names[0].1) { () throws(CheckFailure) -> String in
      for (i, (r, m)) in regions.enumerated() {
        if let status = try s.command(.addMemReg, payload: .singleRegion(SingleMemoryRegion(r)), fds: [m.fd]),
          status != 0
        {
          throw CheckFailure("ADD_MEM_REG of region \(i + 1) of \(count) was refused (status \(status))")
        }
      }
      try s.sync()
      return "\(count) regions added (\(advertised) slots advertised, at most 32 tried), \(how)"
    }
    guard added else {
      notRun(Array(names.dropFirst()), because: "ADD_MEM_REG failed")
      return
    }
    let removed = check(names[1].0, names[1].1) { () throws(CheckFailure) -> String in
      for (i, (r, _)) in regions.enumerated().reversed() {
        if let status = try s.command(.remMemReg, payload: .singleRegion(SingleMemoryRegion(r))), status != 0 {
          throw CheckFailure("REM_MEM_REG of region \(i + 1) of \(count) was refused (status \(status))")
        }
      }
      try s.sync()
      return "\(count) regions removed, \(how)"
    }
    guard removed else {
      notRun(Array(names.dropFirst(2)), because: "REM_MEM_REG failed")
      return
    }
    check(names[2].0, names[2].1) { () throws(CheckFailure) -> String in
      let (r, m) = regions[0]
      try s.command(.addMemReg, payload: .singleRegion(SingleMemoryRegion(r)), fds: [m.fd], ack: false)
      try s.command(.remMemReg, payload: .singleRegion(SingleMemoryRegion(r)), ack: false)
      try s.send(.getFeatures)
      let next = try s.receive()
      if let p = Session.validate(next, replyTo: .getFeatures, size: 8) {
        var extra = ""
        if next.header.request != FrontendRequest.getFeatures.rawValue {
          extra = " (got \(FrontendRequest(rawValue: next.header.request).name) with \(next.body.count) bytes)"
        }
        throw CheckFailure(
          "ADD_MEM_REG and REM_MEM_REG without NEED_REPLY were answered: the first message back was not the reply "
            + "to GET_FEATURES: \(p)\(extra)")
      }
      return "ADD_MEM_REG and REM_MEM_REG without NEED_REPLY: no reply; GET_FEATURES answered next"
    }
  }
}
