import VhostFuzzTargets

#if canImport(Glibc)
  import Glibc
#endif

/// The target named by VHOST_FUZZ_TARGET (default: decode).
let selectedTarget: FuzzTarget = {
  if let name = getenv("VHOST_FUZZ_TARGET").map({ String(cString: $0) }), let t = FuzzTarget(rawValue: name) {
    return t
  }
  return .decode
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
  let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
  selectedTarget.run(bytes)
  return 0
}

#if !FUZZING
  /// Without libFuzzer (`swift build` without `--sanitize fuzzer`): replays files given as arguments.
  @main
  struct Replay {
    static func main() {
      let args = Array(CommandLine.arguments.dropFirst())
      if args.first == "--write-seeds", args.count == 2 {
        for target in FuzzTarget.allCases {
          let dir = args[1] + "/" + target.rawValue
          mkdir(dir, 0o755)
          for (i, seed) in target.seeds.enumerated() {
            guard let f = fopen(dir + "/seed-\(i)", "wb") else { continue }
            _ = seed.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
            fclose(f)
          }
        }
        return
      }
      for path in args {
        guard let f = fopen(path, "rb") else { continue }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
          let n = fread(&buffer, 1, buffer.count, f)
          if n <= 0 { break }
          bytes += buffer[0..<n]
        }
        fclose(f)
        selectedTarget.run(bytes)
      }
    }
  }
#endif
