import VhostProtocol
import VhostSystem
import VhostTransport

#if canImport(Glibc)
  import Glibc
#endif

/// SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE: one transfer at a time per session, on a
/// non-blocking pipe, ended by the session's deadline.
extension BackendSession {
  func setDeviceStateFD(_ p: Payload, _ fds: [OwnedFD]) throws -> Reply {
    try require(.deviceState, .setDeviceStateFD)
    guard case .deviceStateTransfer(let t) = p, let fd = fds.first else { throw RequestFailure("bad payload") }
    guard t.phase == 0, t.direction <= 1 else { throw RequestFailure("unsupported transfer direction/phase") }
    guard queues.allSatisfy({ !$0.started }) else { throw RequestFailure("device state transfer while rings run") }
    // One transfer at a time per session, each with a deadline: a front-end cannot pile up
    // threads blocked on pipes it never serves.
    let busy = stateTransferDone.withLock { !stateTransferFinished }
    guard !busy else { throw RequestFailure("a device state transfer is already in progress") }
    do {
      try fd.setNonBlocking()
    } catch {
      throw RequestFailure("SET_DEVICE_STATE_FD: unusable descriptor: \(error)")
    }
    let device = self.device
    let save = t.direction == 0
    let state = save ? device.saveState() : []
    let deadline = Deadline.after(milliseconds: configuration.timeoutMilliseconds)
    stateTransferDone.withLock { stateTransferFinished = false }
    // The thread holds the session weakly: a transfer never keeps a closed session alive.
    do {
      try SystemThread.start(name: "vhost-state") { [weak self] in
        let result: UInt64 =
          save ? Self.writeAll(fd, state, deadline: deadline) : Self.readAllAndLoad(fd, device, deadline: deadline)
        guard let self else { return }
        stateTransferDone.withLock {
          stateTransferResult = result
          stateTransferFinished = true
          stateTransferDone.broadcast()
        }
      }
    } catch {
      stateTransferDone.withLock { stateTransferFinished = true }
      throw RequestFailure("no thread for the state transfer: \(error)")
    }
    // Bit 8: we do not supply an fd of our own.
    return Reply(payload: .u64(0x100))
  }

  /// Writes the saved state to the (non-blocking) pipe before `deadline`; 0 on success.
  static func writeAll(_ fd: OwnedFD, _ bytes: [UInt8], deadline: Deadline) -> UInt64 {
    var sent = 0
    while sent < bytes.count {
      let n = bytes.withUnsafeBytes { write(fd.rawValue, $0.baseAddress! + sent, $0.count - sent) }
      if n > 0 {
        sent += n
        continue
      }
      if n < 0 && errno == EINTR { continue }
      guard n < 0, errno == EAGAIN || errno == EWOULDBLOCK, !deadline.hasPassed else { return 1 }
      _ = fd.waitWritable(timeoutMilliseconds: max(deadline.remainingMilliseconds, 1))
    }
    return 0
  }

  /// Reads the state from the (non-blocking) pipe until end of file, before `deadline`, and loads
  /// it (at most 64 MiB); 0 on success.
  static func readAllAndLoad(_ fd: OwnedFD, _ device: VhostUserDevice, deadline: Deadline) -> UInt64 {
    var data: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
      let n = buf.withUnsafeMutableBytes { read(fd.rawValue, $0.baseAddress!, $0.count) }
      if n > 0 {
        data += buf[0..<n]
        if data.count > 64 << 20 { return 1 }
        continue
      }
      if n == 0 { break }
      if errno == EINTR { continue }
      guard errno == EAGAIN || errno == EWOULDBLOCK, !deadline.hasPassed else { return 1 }
      _ = fd.waitReadable(timeoutMilliseconds: max(deadline.remainingMilliseconds, 1))
    }
    return (try? device.loadState(data)) == nil ? 1 : 0
  }

  func waitStateTransfer() -> UInt64 {
    stateTransferDone.withLock {
      let end = Deadline.after(milliseconds: configuration.timeoutMilliseconds)
      while !stateTransferFinished && !end.hasPassed { stateTransferDone.wait(until: end) }
      return stateTransferFinished ? stateTransferResult : 1
    }
  }
}
