import VhostFrontend
import VhostProtocol
import VhostSystem
import Virtqueue

extension ConformanceChecker {
  static let reconnectRule = Rule(
    "\"an optional reconnection mechanism can be implemented\": a back-end listening on a socket accepts a new "
      + "front-end after the previous one disconnected (with rings running) and negotiates normally: the same "
      + "features, a working ring", "Communication")

  func reconnectChecks() {
    let name = "reconnect.renegotiate"
    let rule = Self.reconnectRule
    check(name, rule) { () throws(CheckFailure) -> String in
      var first = "negotiated"
      let s1 = try ownedSession()
      do {
        if let device = resolvedDevice {
          let memory: DriverMemory
          do { memory = try DriverMemory(size: 2 << 20, name: "vhost-user-check") } catch {
            throw CheckFailure("\(error)")
          }
          let w = workload(for: device, s1)
          let rings = try bringUp(s1, w, memory: memory)
          try w.run(1, on: rings[w.dataRing]!, timeout: timeoutMilliseconds)
          // Published, not waited for: the back-end sees the front-end leave with work pending.
          try w.submit(on: rings[w.dataRing]!)
          rings[w.dataRing]!.notify()
          first = "first connection: rings running, a request completed and one pending"
        }
      } catch {
        s1.close()
        throw CheckFailure("first connection: \(error)")
      }
      s1.close()

      let s2: Session
      do { s2 = try ownedSession() } catch { throw CheckFailure("second connection: \(error)") }
      defer { s2.close() }
      if let (f, p) = firstOffer {
        guard s2.offered == f else {
          throw CheckFailure("second connection: GET_FEATURES \(hex(s2.offered.rawValue)), first \(hex(f.rawValue))")
        }
        guard s2.protocolOffer == p else {
          throw CheckFailure("second connection: GET_PROTOCOL_FEATURES \(s2.protocolOffer), first \(p)")
        }
      }
      var second = "negotiated the same features"
      if let device = resolvedDevice {
        let memory: DriverMemory
        do { memory = try DriverMemory(size: 2 << 20, name: "vhost-user-check") } catch {
          throw CheckFailure("\(error)")
        }
        let w = workload(for: device, s2)
        let rings = try bringUp(s2, w, memory: memory)
        do {
          try w.run(1, on: rings[w.dataRing]!, timeout: timeoutMilliseconds)
        } catch {
          throw CheckFailure("second connection: \(error)")
        }
        second += " and \(w.what) completed"
      }
      return "\(first); closed; the second connection \(second)"
    }
  }
}
