import Foundation
import Testing
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTransport

/// Every front-end suite is nested in this one so that they run one at a time: the descriptor-leak
/// checks count the process's open descriptors, which a concurrently running test would disturb.
@Suite(.serialized) enum FrontendTests {}

/// The seeds' protocol features: MQ, LOG_SHMFD, RARP, REPLY_ACK, MTU.
let seedProtocolFeatures: UInt64 = 0x1f

/// Runs `body` and returns the `FrontendError` it threw (nil if it did not throw; any other error
/// is recorded as an issue).
func catching(sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) -> FrontendError? {
  do {
    try body()
    return nil
  } catch let error as FrontendError {
    return error
  } catch {
    Issue.record("expected a FrontendError, got \(error)", sourceLocation: sourceLocation)
    return nil
  }
}

extension FrontendError {
  var isNotNegotiated: Bool {
    if case .notNegotiated = self { return true }
    return false
  }
  var notNegotiatedRequest: String? {
    if case .notNegotiated(let request, _) = self { return request }
    return nil
  }
  var refusal: (request: String, status: UInt64)? {
    if case .refused(let request, let status) = self { return (request, status) }
    return nil
  }
  var invalidReplyRequest: String? {
    if case .invalidReply(let request, _) = self { return request }
    return nil
  }
  var channelError: ChannelError? {
    if case .channel(let e) = self { return e }
    return nil
  }
}

/// Ends a fake's script the way a real front-end would (closing its socket) and waits for it.
func finish(_ connection: VhostUserConnection, _ fake: FakeBackend) {
  connection.close()
  #expect(fake.join(), "the fake back-end's thread did not end")
}

/// Descriptors of this process whose /proc/self/fd link contains `text` (e.g. a memfd's name).
func openDescriptors(linkingTo text: String) -> Int {
  let dir = "/proc/self/fd"
  guard let entries = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return -1 }
  return entries.count { name in
    (try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + name))?.contains(text) ?? false
  }
}

/// A memfd-backed region of `pages` pages at `guestPhysAddr`.
func memoryRegion(_ name: String, guestPhysAddr: UInt64, pages: Int = 1) throws -> (SharedMemory, GuestRegion) {
  let memory = try SharedMemory(anonymous: name, size: pages * 4096)
  return (memory, GuestRegion(memory, guestPhysAddr: guestPhysAddr))
}
