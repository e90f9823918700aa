/// Writes integers in the host's native byte order, as vhost-user requires.
public struct ByteWriter: Sendable {
  public private(set) var bytes: [UInt8]

  public init(capacity: Int = 64) {
    bytes = []
    bytes.reserveCapacity(capacity)
  }

  public mutating func write<T: FixedWidthInteger>(_ value: T) {
    withUnsafeBytes(of: value) { bytes.append(contentsOf: $0) }
  }

  public mutating func write(bytes other: some Sequence<UInt8>) { bytes.append(contentsOf: other) }

  public mutating func pad(_ count: Int) { bytes.append(contentsOf: repeatElement(0, count: count)) }
}

/// Reads integers in native byte order from a byte buffer; every read is bounds-checked.
public struct ByteReader: Sendable {
  public let bytes: [UInt8]
  public private(set) var offset: Int

  public init(_ bytes: [UInt8], offset: Int = 0) {
    self.bytes = bytes
    self.offset = offset
  }

  public var remaining: Int { bytes.count - offset }

  public mutating func read<T: FixedWidthInteger>(_: T.Type = T.self) throws(ProtocolError) -> T {
    let size = MemoryLayout<T>.size
    guard remaining >= size else { throw .truncated(needed: offset + size, available: bytes.count) }
    var v: T = 0
    for i in 0..<size {
      v |= T(truncatingIfNeeded: bytes[offset + i]) << (8 * i)
    }
    offset += size
    #if _endian(little)
      return v
    #else
      return T(bigEndian: v.byteSwapped)
    #endif
  }

  public mutating func read(count: Int) throws(ProtocolError) -> [UInt8] {
    guard count >= 0, remaining >= count else {
      throw .truncated(needed: offset + max(count, 0), available: bytes.count)
    }
    defer { offset += count }
    return Array(bytes[offset..<offset + count])
  }

  public mutating func skip(_ count: Int) throws(ProtocolError) {
    _ = try read(count: count)
  }
}
