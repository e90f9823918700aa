import VhostProtocol

/// How one check came out.
public enum CheckOutcome: String, Sendable, Hashable, CaseIterable {
  /// The back-end follows the rule.
  case pass
  /// The back-end deviates from the rule (or stopped answering while it was tested).
  case fail
  /// Not applicable: the feature the rule concerns is not offered (or the check could not run;
  /// the detail says which).
  case skip

  /// The word printed in text reports.
  public var label: String { rawValue.uppercased() }
}

/// The result of one conformance check.
public struct CheckResult: Sendable, Hashable {
  /// A stable dotted name, e.g. `handshake.get-features-reply`.
  public var name: String
  /// The rule tested: a short quote or paraphrase of the specification.
  public var rule: String
  /// Where the rule is in the specification (QEMU docs/interop/vhost-user.rst).
  public var section: String
  public var outcome: CheckOutcome
  /// What was observed.
  public var detail: String

  public init(name: String, rule: String, section: String, outcome: CheckOutcome, detail: String) {
    self.name = name
    self.rule = rule
    self.section = section
    self.outcome = outcome
    self.detail = detail
  }

  /// Two lines: outcome, name and what was observed; then the rule and its section.
  public var text: String {
    let pad = String(repeating: " ", count: max(0, 4 - outcome.label.count))
    return "\(outcome.label)\(pad) \(name): \(detail)\n      rule: \(rule) [\(section)]"
  }

  /// One JSON object.
  public var json: String {
    "{\"name\":\(jsonString(name)),\"outcome\":\(jsonString(outcome.rawValue)),\"rule\":\(jsonString(rule)),"
      + "\"section\":\(jsonString(section)),\"detail\":\(jsonString(detail))}"
  }
}

/// Counts of a run.
public struct CheckSummary: Sendable, Hashable {
  public var pass = 0
  public var fail = 0
  public var skip = 0

  public init(_ results: [CheckResult]) {
    for r in results {
      switch r.outcome {
      case .pass: pass += 1
      case .fail: fail += 1
      case .skip: skip += 1
      }
    }
  }

  public var text: String { "summary: \(pass) passed, \(fail) failed, \(skip) skipped" }

  /// One JSON object: `{"summary":{"pass":..,"fail":..,"skip":..}}`.
  public var json: String { "{\"summary\":{\"pass\":\(pass),\"fail\":\(fail),\"skip\":\(skip)}}" }
}

func hex<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }
