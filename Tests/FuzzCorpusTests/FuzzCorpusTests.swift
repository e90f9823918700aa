import Foundation
import Testing
import VhostFuzzTargets

/// The committed seed corpora (and the seeds the code generates) run through every fuzz target
/// without the fuzzer, so a regression shows up in a plain `swift test`.
@Suite struct FuzzCorpusTests {
  static let corpus: URL = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.appendingPathComponent("Fuzz/corpus")
  }()

  @Test("committed corpus replays cleanly", arguments: FuzzTarget.allCases)
  func replay(target: FuzzTarget) throws {
    let dir = Self.corpus.appendingPathComponent(target.rawValue)
    let files = try FileManager.default.contentsOfDirectory(atPath: dir.path)
    #expect(!files.isEmpty, "no seeds committed for \(target.rawValue)")
    for f in files { target.run([UInt8](try Data(contentsOf: dir.appendingPathComponent(f)))) }
  }

  @Test("generated seeds match the committed ones", arguments: FuzzTarget.allCases)
  func seedsCommitted(target: FuzzTarget) throws {
    let dir = Self.corpus.appendingPathComponent(target.rawValue)
    for (i, seed) in target.seeds.enumerated() {
      let committed = try Data(contentsOf: dir.appendingPathComponent("seed-\(i)"))
      #expect([UInt8](committed) == seed, "Fuzz/corpus/\(target.rawValue)/seed-\(i) is stale: vhost-fuzz --write-seeds")
    }
  }
}
