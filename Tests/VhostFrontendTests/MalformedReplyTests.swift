import Dispatch
import Testing
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTransport

/// A way of answering GET_FEATURES wrongly, and the error the front-end must report.
enum BadFeaturesReply: String, Sendable, CaseIterable, CustomStringConvertible {
  case flagsWithoutReply, flagsWithNeedReply, wrongRequestCode, oversize, shortBody, halfHeaderThenClose
  case closeWithoutReply, silence, descriptorsAttached

  static let features: UInt64 = VirtioFeatures([.version1, .protocolFeatures]).rawValue
  /// Name of the memfd attached by `descriptorsAttached`, to look for leaked copies.
  static let memfdName = "fetest-leak-check"

  var description: String { rawValue }

  static func header(request: UInt32 = 1, flags: UInt32 = 0x5, size: UInt32) -> [UInt8] {
    MessageHeader(request: request, flags: HeaderFlags(rawValue: flags), size: size).encoded()
  }

  static func u64Bytes(_ value: UInt64) -> [UInt8] { Payload.u64(value).encoded() }

  func action() -> FakeAction {
    switch self {
    case .flagsWithoutReply: return .raw(Self.header(flags: 0x1, size: 8) + Self.u64Bytes(Self.features))
    case .flagsWithNeedReply: return .raw(Self.header(flags: 0xd, size: 8) + Self.u64Bytes(Self.features))
    case .wrongRequestCode: return .raw(Self.header(request: 15, size: 8) + Self.u64Bytes(Self.features))
    // Only the header: a front-end that tried to read the 64 KiB body would time out instead.
    case .oversize: return .raw(Self.header(size: 0x10000))
    case .shortBody: return .raw(Self.header(size: 4) + [1, 2, 3, 4])
    case .halfHeaderThenClose: return .sendThenClose(Array(Self.header(size: 8).prefix(6)))
    case .closeWithoutReply: return .close
    case .silence: return .silent
    case .descriptorsAttached:
      do {
        let memfd = try SharedMemory(anonymous: Self.memfdName, size: 4096).fd
        let eventfd = try EventFD().fd
        return .reply(.u64(Self.features), fds: [memfd, eventfd])
      } catch {
        return .close
      }
    }
  }

  /// Whether `error` is the one this malformation must produce.
  func matches(_ error: ChannelError) -> Bool {
    switch (self, error) {
    case (.flagsWithoutReply, .badReply(.badFlags(0x1))): true
    case (.flagsWithNeedReply, .badReply(.badFlags(0xd))): true
    case (.wrongRequestCode, .badReply(.wrongRequest(let expected, let got))):
      expected == "GET_FEATURES" && got == "GET_PROTOCOL_FEATURES"
    case (.oversize, .malformed(.oversize(let size, _))): size == 0x10000
    case (.shortBody, .badReply(.malformed(.wrongPayloadSize(_, _, let actual)))): actual == 4
    case (.halfHeaderThenClose, .transport(.disconnectedMidMessage)): true
    case (.closeWithoutReply, .transport(.disconnected)): true
    case (.silence, .transport(.timeout)): true
    case (.descriptorsAttached, .badReply(.malformed(.wrongFDCount(_, _, let actual)))): actual == 2
    default: false
    }
  }
}

extension FrontendTests {
  @Suite struct MalformedReplies {
    @Test(arguments: BadFeaturesReply.allCases)
    func badGetFeaturesReplyFailsWithTypedErrorAndLeaksNothing(_ bad: BadFeaturesReply) throws {
      let before = OwnedFD.openCount()
      do {
        let fake = try FakeBackend { request, _ in
          request.code == .getFeatures ? bad.action() : .silent
        }
        let connection = fake.connect(timeoutMilliseconds: 300)
        let start = ContinuousClock.now
        let error = catching { _ = try connection.device().getFeatures() }
        let elapsed = start.duration(to: .now)
        #expect(elapsed < .seconds(3), "\(bad) took \(elapsed)")
        if let channelError = error?.channelError {
          #expect(bad.matches(channelError), "\(bad): got \(channelError)")
        } else {
          Issue.record("\(bad): expected FrontendError.channel, got \(String(describing: error))")
        }
        #expect(connection.state.backendFeatures.isEmpty, "nothing from a bad reply may be recorded")
        finish(connection, fake)
        #expect(fake.codes == [.getFeatures])
        #expect(openDescriptors(linkingTo: BadFeaturesReply.memfdName) == 0)
      }
      // Other tests' threads may still be closing their own descriptors, so fewer is fine; more is a leak.
      #expect(OwnedFD.openCount() <= before, "\(bad) leaked descriptors")
    }

    /// After a timeout the front-end keeps using the connection, so a late reply is taken as the
    /// answer to the next request. The spec says a front-end that gets no valid reply closes the
    /// connection; this one returns the stale value.
    @Test func lateReplyAfterTimeoutIsNotTakenForTheNextAnswer() throws {
      let late: UInt64 = 0xAAAA
      let fresh: UInt64 = 0xBBBB
      let frontendGaveUp = DispatchSemaphore(value: 0)
      let scripted = try FakeBackend(responder: Self.lateThenFresh(late: late, fresh: fresh, gaveUp: frontendGaveUp))
      let connection = scripted.connect(timeoutMilliseconds: 300)
      let view = connection.device()

      let first = catching { _ = try view.getFeatures() }
      guard case .transport(.timeout)? = first?.channelError else {
        Issue.record("expected a timeout, got \(String(describing: first))")
        return
      }
      frontendGaveUp.signal()
      var second: UInt64?
      do {
        second = try view.getFeatures().rawValue
      } catch {
        second = nil  // refusing to use a broken connection is fine
      }
      #expect(second != late, "the stale reply 0x\(String(late, radix: 16)) was accepted")
      #expect(second == nil, "a connection whose exchange failed must refuse later requests")
      finish(connection, scripted)
    }

    /// GET_FEATURES #1: wait until the front-end gave up, then answer it late; GET_FEATURES #2: answer.
    static func lateThenFresh(late: UInt64, fresh: UInt64, gaveUp: DispatchSemaphore) -> FakeBackend.Responder {
      let answered = Shared(0)
      return { request, _ in
        guard request.code == .getFeatures else { return .silent }
        let n = answered.get()
        answered.set(n + 1)
        if n == 0 {
          _ = gaveUp.wait(timeout: .now() + 5)
          return .reply(.u64(late))
        }
        return .reply(.u64(fresh))
      }
    }
  }
}
