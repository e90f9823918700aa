import Foundation
import Testing
import VhostTooling

/// Real peers come from Debian packages. Plain `swift test` skips a test whose peer is missing
/// (printing why); with VHOST_E2E_REQUIRED=1 (CI) a missing peer is a failure.
enum Peers {
  static var required: Bool { ProcessInfo.processInfo.environment["VHOST_E2E_REQUIRED"] == "1" }

  /// The peer's path, or nil after recording a failure (required) or printing a skip notice.
  static func require(_ executable: String, package: String, sourceLocation: SourceLocation = #_sourceLocation)
    -> String?
  {
    if let path = findExecutable(executable) { return path }
    let message = "\(executable) not found (Debian package \(package)); see README 'Running the tests'"
    if required {
      Issue.record(
        Comment(rawValue: message + " — VHOST_E2E_REQUIRED=1, so this is a failure"),
        sourceLocation: sourceLocation)
    } else {
      print("SKIP: \(message)")
    }
    return nil
  }
}

/// Fills a file with `size` bytes (a multiple of 1 MiB) of a deterministic pattern that differs per MiB.
func makeImage(_ path: String, size: Int, seed: UInt64 = 0x9e37_79b9_7f4a_7c15) throws {
  var words = [UInt64](repeating: 0, count: (1 << 20) / 8)
  var x = seed
  for i in words.indices {
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    words[i] = x
  }
  _ = FileManager.default.createFile(atPath: path, contents: nil)
  let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
  defer { try? h.close() }
  for block in 0..<(size >> 20) {
    words[0] = UInt64(block) &* 0x1000_0000_0000_0001
    try words.withUnsafeBytes { try h.write(contentsOf: Data($0)) }
  }
}

/// Deterministic test data.
func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
  (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &* 7 &+ ($0 >> 9)) }
}

/// Reads `count` bytes of a file at `offset`.
func readFile(_ path: String, offset: UInt64, count: Int) throws -> [UInt8] {
  let h = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
  defer { try? h.close() }
  try h.seek(toOffset: offset)
  return [UInt8](try h.read(upToCount: count) ?? Data())
}
