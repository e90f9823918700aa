import CVhostShim

/// Fills a buffer from getrandom(2); returns fewer bytes only if the kernel does.
public func systemRandomBytes(_ count: Int) -> [UInt8] {
  var bytes = [UInt8](repeating: 0, count: count)
  var got = 0
  while got < count {
    let n = bytes.withUnsafeMutableBytes { _cvh_getrandom($0.baseAddress! + got, count - got) }
    if n <= 0 { break }
    got += n
  }
  return Array(bytes[0..<got])
}
