import VhostFrontend
import VhostProtocol
import VhostSystem
import Virtqueue

/// Connects to a vhost-user back-end as a front-end and checks it against the specification
/// (QEMU docs/interop/vhost-user.rst): handshake, REPLY_ACK, ring lifecycle, memory table updates,
/// config space, reconnection, and — last, each on a fresh connection — malformed messages, after
/// each of which the back-end must still serve a new connection.
///
/// Each group of checks runs on its own connection, closed before the next one opens (back-ends
/// such as qemu-storage-daemon serve one front-end at a time).
public final class ConformanceChecker: @unchecked Sendable {
  public let socketPath: String
  public let timeoutMilliseconds: Int
  /// The device type given by the caller (nil: inferred from the feature bits).
  public let device: VirtioDeviceType?
  /// Called with each result as soon as it is known (the CLI prints progressively).
  public var progress: (@Sendable (CheckResult) -> Void)?

  var results: [CheckResult] = []
  /// The device type in use (given or inferred), set by the handshake.
  var resolvedDevice: VirtioDeviceType?
  /// What the first handshake learnt (the reconnect check compares against it).
  var firstOffer: (VirtioFeatures, ProtocolFeatures)?

  public init(socketPath: String, timeoutMilliseconds: Int = 5000, device: VirtioDeviceType? = nil) {
    self.socketPath = socketPath
    self.timeoutMilliseconds = max(100, timeoutMilliseconds)
    self.device = device
  }

  /// How long a negative check ("nothing happens") watches.
  var quietWindow: Int { max(200, min(timeoutMilliseconds / 4, 1000)) }

  /// Runs every check and returns the results in order. One run at a time per checker (it keeps
  /// the run's state); the back-end is left with no connection open.
  public func run() -> [CheckResult] {
    results = []
    guard handshakeChecks() else { return results }
    replyAckChecks()
    ringChecks()
    memoryChecks()
    configChecks()
    reconnectChecks()
    robustnessChecks()
    return results
  }

  // MARK: Recording

  func record(_ name: String, _ rule: Rule, _ outcome: CheckOutcome, _ detail: String) {
    let r = CheckResult(name: name, rule: rule.text, section: rule.section, outcome: outcome, detail: detail)
    results.append(r)
    progress?(r)
  }

  func pass(_ name: String, _ rule: Rule, _ detail: String) { record(name, rule, .pass, detail) }
  func fail(_ name: String, _ rule: Rule, _ detail: String) { record(name, rule, .fail, detail) }
  func skip(_ name: String, _ rule: Rule, _ detail: String) { record(name, rule, .skip, detail) }

  /// Runs `body`; a thrown failure becomes a FAIL of `name`. Returns whether it passed.
  @discardableResult
  func check(_ name: String, _ rule: Rule, _ body: () throws(CheckFailure) -> String) -> Bool {
    do {
      pass(name, rule, try body())
      return true
    } catch {
      fail(name, rule, error.description)
      return false
    }
  }

  /// Records every name in `names` as not run (an earlier step failed).
  func notRun(_ names: [(String, Rule)], because reason: String) {
    for (n, r) in names { skip(n, r, "not run: \(reason)") }
  }

  func open() throws(CheckFailure) -> Session { try Session.open(socketPath, timeout: timeoutMilliseconds) }

  /// A connection that went through GET_FEATURES, the protocol feature exchange, SET_OWNER and
  /// SET_FEATURES.
  func ownedSession() throws(CheckFailure) -> Session {
    let s = try open()
    do {
      try s.negotiate()
      try s.own(device: resolvedDevice)
    } catch {
      s.close()
      throw error
    }
    return s
  }

  /// Infers the device type from feature bits (see `VirtioDeviceType.init(inferringFrom:)`).
  static func infer(_ f: VirtioFeatures) -> VirtioDeviceType? { VirtioDeviceType(inferringFrom: f) }

  /// Bytes of config space the device type defines.
  static func configSize(_ d: VirtioDeviceType) -> Int {
    switch d {
    case .blk: BlkConfig.size
    case .net: NetConfig.size
    case .rng: 0
    }
  }
}

/// A rule of the specification: a short quote or paraphrase and the section it is in.
struct Rule {
  let text: String
  let section: String
  init(_ text: String, _ section: String) {
    self.text = text
    self.section = section
  }
}
