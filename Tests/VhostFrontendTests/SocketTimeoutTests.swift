import Testing
import VhostSystem

@Suite struct SocketTimeoutTests {
  @Test("sending to a peer that never reads times out, even on a blocking socket; the socket stays usable")
  func sendTimesOut() throws {
    let (a, b) = try UnixSocket.pair()
    let chunk = [UInt8](repeating: 0x5a, count: 64 << 10)
    var sent = 0
    var outcome: TransportError?
    // A socketpair buffers a few hundred KiB; 64 MiB cannot fit, so a send must hit the timeout.
    while sent < 64 << 20 {
      do {
        try a.send(chunk, timeoutMilliseconds: 100)
        sent += chunk.count
      } catch {
        outcome = error
        break
      }
    }
    guard case .timeout? = outcome else {
      Issue.record("expected a send timeout, got \(String(describing: outcome)) after \(sent) bytes")
      return
    }
    #expect(sent > 0 && sent < 64 << 20)
    // The reader drains some; the sender can go on.
    _ = try b.receive(count: 64 << 10, deadline: .after(milliseconds: 1000), what: "drain")
    try a.send([1, 2, 3], timeoutMilliseconds: 1000)
  }
}
