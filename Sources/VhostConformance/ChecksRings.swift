import VhostFrontend
import VhostProtocol
import VhostSystem
import Virtqueue

extension ConformanceChecker {
  static let startRule = Rule(
    "each ring is initialized in a stopped state; the back-end starts it on SET_VRING_KICK (the kick on its fd); "
      + "a started and enabled ring is processed", "Communication › Ring states")
  static let disableRule = Rule(
    "started but disabled: the back-end must process the ring without causing any side effects (net: must not "
      + "supply RX, must process and discard TX)", "Communication › Ring states")
  static let enableRule = Rule(
    "with VHOST_USER_F_PROTOCOL_FEATURES negotiated a ring is enabled by SET_VRING_ENABLE with parameter 1",
    "Communication › Ring states; VHOST_USER_SET_VRING_ENABLE")
  static let getBaseRule = Rule(
    "GET_VRING_BASE stops the ring and returns the available vring base offset: the avail index where the "
      + "back-end stopped (index = the ring asked for); QEMU 7.2 sends SET_STATUS 0 first when STATUS is "
      + "negotiated, so the position must survive it", "Ring states; VHOST_USER_GET_VRING_BASE")
  static let stoppedRule = Rule(
    "stopped: the back-end must not process the ring at all", "Communication › Ring states")
  static let restartRule = Rule(
    "SET_VRING_BASE sets the base offset in the available vring: restarted with the base GET_VRING_BASE "
      + "returned, the back-end continues exactly there", "VHOST_USER_SET_VRING_BASE; Ring states")
  static let wrapRule = Rule(
    "SET_VRING_BASE n on a fresh ring: processing starts at avail index n (here 65534) and the free-running "
      + "16-bit indices wrap", "VHOST_USER_SET_VRING_BASE")

  /// Memory, rings and a started device: SET_MEM_TABLE, every ring the device needs configured and
  /// kicked (QEMU's order), enabled, DRIVER_OK (STATUS), then a kick on each.
  func bringUp(_ s: Session, _ w: Workload, memory: DriverMemory) throws(CheckFailure) -> [UInt32: TestRing] {
    try s.setMemTable(memory)
    var rings: [UInt32: TestRing] = [:]
    for i in w.rings {
      let r = try TestRing(index: i, in: memory)
      try s.startRing(r)
      rings[i] = r
    }
    for i in w.rings { try s.enable(i, true) }
    try s.driverOK()
    // The spec: front-ends SHOULD inject a kick after SET_VRING_KICK.
    for r in rings.values { r.notify() }
    return rings
  }

  func workload(for device: VirtioDeviceType, _ s: Session) -> Workload {
    var w = Workload(device: device)
    w.netHeaderLength = s.acked.contains(.version1) || s.acked.contains(VirtioFeatures(bit: 15)) ? 12 : 10
    return w
  }

  func ringChecks() {
    let names: [(String, Rule)] = [
      ("ring.start-on-kick", Self.startRule), ("ring.disable", Self.disableRule), ("ring.enable", Self.enableRule),
      ("ring.get-vring-base", Self.getBaseRule), ("ring.stopped", Self.stoppedRule),
      ("ring.restart-from-base", Self.restartRule), ("ring.base-wrap", Self.wrapRule),
    ]
    guard let device = resolvedDevice else {
      notRun(names, because: "device type unknown (pass --device blk|net|rng)")
      return
    }
    let s: Session
    let memory: DriverMemory
    do {
      s = try ownedSession()
      memory = try DriverMemory(size: 4 << 20, name: "vhost-user-check")
    } catch {
      fail(names[0].0, names[0].1, "could not set up the device: \(error)")
      notRun(Array(names.dropFirst()), because: "setup failed")
      return
    }
    defer { s.close() }
    let w = workload(for: device, s)
    let t = timeoutMilliseconds
    var rings: [UInt32: TestRing] = [:]
    let started = check(names[0].0, names[0].1) { () throws(CheckFailure) -> String in
      rings = try bringUp(s, w, memory: memory)
      try w.run(1, on: rings[w.dataRing]!, timeout: t)
      return "after SET_VRING_KICK (and enable\(s.protocolAcked.contains(.status) ? ", DRIVER_OK" : "")), "
        + "\(w.what) on ring \(w.dataRing) completed"
    }
    guard started else {
      notRun(Array(names.dropFirst()), because: "the ring never worked")
      return
    }
    let data = rings[w.dataRing]!
    var broken: String?

    // Disable, then enable.
    if s.acked.contains(.protocolFeatures) {
      var completedWhileDisabled = false
      let disabledOK = check(names[1].0, names[1].1) { () throws(CheckFailure) -> String in
        try s.enable(data.index, false)
        try w.submit(on: data)
        data.notify()
        let done = try data.waitCompletions(1, milliseconds: quietWindow)
        completedWhileDisabled = !done.isEmpty
        if device == .net {
          return completedWhileDisabled
            ? "a frame sent while ring \(data.index) was disabled was consumed (discarded)"
            : "a frame sent while ring \(data.index) was disabled was left in the ring (\(quietWindow) ms)"
        }
        guard !completedWhileDisabled else {
          throw CheckFailure(
            "\(w.what) submitted while ring \(data.index) was disabled completed: guest memory was written "
              + "(a side effect)")
        }
        return "\(w.what) submitted while ring \(data.index) was disabled was not processed (\(quietWindow) ms)"
      }
      if !disabledOK && !completedWhileDisabled { broken = "SET_VRING_ENABLE 0 failed" }
      if broken == nil {
        let reenabled = check(names[2].0, names[2].1) { () throws(CheckFailure) -> String in
          try s.enable(data.index, true)
          data.notify()
          if data.outstandingCount > 0 {
            let done = try data.waitCompletions(data.outstandingCount, milliseconds: t)
            guard data.outstandingCount == 0 else {
              throw CheckFailure("the request left while disabled did not complete after SET_VRING_ENABLE 1")
            }
            for u in done { if let p = w.problem(with: u, on: data) { throw CheckFailure(p) } }
          }
          try w.run(1, on: data, timeout: t)
          return "after SET_VRING_ENABLE 1 the ring is processed again"
            + (completedWhileDisabled ? "" : " (the pending request completed, then a new one)")
        }
        if !reenabled { broken = "the ring did not work after SET_VRING_ENABLE 1" }
      } else {
        skip(names[2].0, names[2].1, "not run: \(broken!)")
      }
    } else {
      skip(names[1].0, names[1].1, "VHOST_USER_F_PROTOCOL_FEATURES not negotiated (rings start enabled)")
      skip(names[2].0, names[2].1, "VHOST_USER_F_PROTOCOL_FEATURES not negotiated (rings start enabled)")
    }
    if let broken {
      notRun(Array(names.dropFirst(3)), because: broken)
      return
    }

    // Stop: GET_VRING_BASE returns where the ring stopped, and nothing is processed afterwards.
    var stoppedAt: UInt16 = 0
    let gotBase = check(names[3].0, names[3].1) { () throws(CheckFailure) -> String in
      let expected = data.availIdx
      try s.stopDevice()
      let num = try s.getVringBase(data.index)
      guard num == UInt32(expected) else {
        throw CheckFailure(
          "GET_VRING_BASE answered \(num); the driver published and the device completed up to avail index "
            + "\(expected)")
      }
      stoppedAt = expected
      return
        "answered \(num) = the avail index after the \(Int(expected) - Int(data.startIndex)) requests it completed"
        + (s.protocolAcked.contains(.status) ? " (sent after SET_STATUS 0, as QEMU 7.2 stops a device)" : "")
    }
    guard gotBase else {
      notRun(Array(names.dropFirst(4)), because: "GET_VRING_BASE failed")
      return
    }
    let stoppedOK = check(names[4].0, names[4].1) { () throws(CheckFailure) -> String in
      try w.submit(on: data)
      data.notify()
      let done = try data.waitCompletions(1, milliseconds: quietWindow)
      guard done.isEmpty else {
        throw CheckFailure("\(w.what) published after GET_VRING_BASE completed: the stopped ring was processed")
      }
      return "\(w.what) published after GET_VRING_BASE was not processed (\(quietWindow) ms)"
    }
    guard stoppedOK else {
      notRun(Array(names.dropFirst(5)), because: "the ring did not stop")
      return
    }

    // Restart from the base GET_VRING_BASE returned: the request published while stopped is next.
    let restarted = check(names[5].0, names[5].1) { () throws(CheckFailure) -> String in
      try s.startRing(data, base: stoppedAt)
      try s.enable(data.index, true)
      try s.driverOK()
      data.notify()
      let done = try data.waitCompletions(1, milliseconds: t)
      guard let u = done.first else {
        throw CheckFailure(
          "restarted with SET_VRING_BASE \(stoppedAt): the request at avail index \(stoppedAt) "
            + "did not complete")
      }
      if let p = w.problem(with: u, on: data) { throw CheckFailure(p) }
      let usedNow = data.deviceUsedIndex
      guard usedNow == stoppedAt &+ 1 else {
        throw CheckFailure(
          "after restarting at \(stoppedAt) the used index is \(usedNow), expected \(stoppedAt &+ 1)")
      }
      try w.run(1, on: data, timeout: t)
      return "restarted with SET_VRING_BASE \(stoppedAt): the request published while stopped completed "
        + "(used index \(usedNow)), then a new one"
    }
    guard restarted else {
      notRun(Array(names.dropFirst(6)), because: "the restart failed")
      return
    }

    // A fresh ring that starts at 65534 and wraps.
    check(names[6].0, names[6].1) { () throws(CheckFailure) -> String in
      let before = try s.getVringBase(data.index)
      guard before == UInt32(data.availIdx) else {
        throw CheckFailure("second GET_VRING_BASE answered \(before), expected \(data.availIdx)")
      }
      let fresh = try TestRing(index: data.index, startIndex: 65534, in: memory)
      try s.startRing(fresh)
      try s.enable(fresh.index, true)
      fresh.notify()
      try w.run(4, on: fresh, timeout: t)
      let used = fresh.deviceUsedIndex
      guard used == 2 else { throw CheckFailure("after 4 requests from 65534 the used index is \(used), expected 2") }
      let end = try s.getVringBase(fresh.index)
      guard end == 2 else { throw CheckFailure("GET_VRING_BASE after wrapping answered \(end), expected 2") }
      return "4 requests from avail index 65534 completed; used index and GET_VRING_BASE wrapped to 2"
    }
  }
}
