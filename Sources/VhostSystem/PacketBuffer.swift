#if canImport(Glibc)
  import Glibc
#endif

/// A fixed-size byte buffer for packet processing above the low-level modules: frames are copied
/// in from guest memory or a file descriptor, examined and changed by index, and copied out, with
/// every access bounds-checked here so that code using it needs no unsafe pointers.
public final class PacketBuffer: @unchecked Sendable {
  @usableFromInline let base: UnsafeMutableRawPointer
  public let capacity: Int

  /// Zero-filled; calloc, so large buffers take no resident memory until used.
  public init(capacity: Int) {
    self.capacity = max(capacity, 1)
    guard let p = calloc(self.capacity, 1) else { fatalError("out of memory for a \(capacity)-byte packet buffer") }
    base = p
  }

  deinit { free(base) }

  /// Whether `range` lies inside the buffer.
  @inlinable
  public func contains(_ range: Range<Int>) -> Bool { range.lowerBound >= 0 && range.upperBound <= capacity }

  /// One byte (a programming error, not input, if out of range: it traps).
  @inlinable
  public subscript(i: Int) -> UInt8 {
    get {
      precondition(i >= 0 && i < capacity, "PacketBuffer index \(i) outside 0..<\(capacity)")
      return base.load(fromByteOffset: i, as: UInt8.self)
    }
    set {
      precondition(i >= 0 && i < capacity, "PacketBuffer index \(i) outside 0..<\(capacity)")
      base.storeBytes(of: newValue, toByteOffset: i, as: UInt8.self)
    }
  }

  /// A little-endian u16 at `i`.
  @inlinable
  public func u16le(at i: Int) -> UInt16 { UInt16(self[i]) | UInt16(self[i + 1]) << 8 }

  @inlinable
  public func setU16le(_ v: UInt16, at i: Int) {
    self[i] = UInt8(truncatingIfNeeded: v)
    self[i + 1] = UInt8(truncatingIfNeeded: v >> 8)
  }

  /// The six bytes at `i` as a big-endian number (a MAC address as a table key).
  @inlinable
  public func u48be(at i: Int) -> UInt64 {
    precondition(i >= 0 && i + 6 <= capacity)
    var k: UInt64 = 0
    for j in 0..<6 { k = k << 8 | UInt64(base.load(fromByteOffset: i + j, as: UInt8.self)) }
    return k
  }

  /// A copy of `range`.
  public func bytes(_ range: Range<Int>) -> [UInt8] {
    precondition(contains(range))
    return [UInt8](UnsafeRawBufferPointer(start: base + range.lowerBound, count: range.count))
  }

  /// Copies `bytes` in at `offset`.
  public func set(_ bytes: [UInt8], at offset: Int) {
    precondition(contains(offset..<(offset + bytes.count)))
    bytes.withUnsafeBytes { if let p = $0.baseAddress { (base + offset).copyMemory(from: p, byteCount: $0.count) } }
  }

  /// Sets `range` to `byte`.
  public func fill(_ byte: UInt8, _ range: Range<Int>) {
    precondition(contains(range))
    memset(base + range.lowerBound, Int32(byte), range.count)
  }

  /// Copies `range` of `other` to `offset` here.
  public func copy(from other: PacketBuffer, _ range: Range<Int>, to offset: Int) {
    precondition(other.contains(range) && contains(offset..<(offset + range.count)))
    (base + offset).copyMemory(from: other.base + range.lowerBound, byteCount: range.count)
  }

  /// Copies `count` bytes of `memory` at `memoryOffset` to `offset` here.
  public func read(from memory: SharedMemory, at memoryOffset: UInt64, count: Int, to offset: Int)
    throws(MemoryAccessError)
  {
    precondition(contains(offset..<(offset + count)))
    try memory.read(at: memoryOffset, into: UnsafeMutableRawBufferPointer(start: base + offset, count: count))
  }

  /// Copies `range` into `memory` at `memoryOffset`.
  public func write(_ range: Range<Int>, to memory: SharedMemory, at memoryOffset: UInt64) throws(MemoryAccessError) {
    precondition(contains(range))
    try memory.write(from: UnsafeRawBufferPointer(start: base + range.lowerBound, count: range.count), at: memoryOffset)
  }

  /// The 16-bit ones' complement sum of `range` (big-endian words, an odd last byte padded), folded.
  public func onesComplementSum(_ range: Range<Int>) -> UInt16 {
    precondition(contains(range))
    var sum: UInt64 = 0
    var i = range.lowerBound
    while i + 1 < range.upperBound {
      sum &+=
        UInt64(base.load(fromByteOffset: i, as: UInt8.self)) << 8
        | UInt64(base.load(fromByteOffset: i + 1, as: UInt8.self))
      i += 2
    }
    if i < range.upperBound { sum &+= UInt64(base.load(fromByteOffset: i, as: UInt8.self)) << 8 }
    while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
    return UInt16(sum)
  }

  /// read(2) into the whole buffer; the byte count, or -1 with errno set.
  public func read(fd: Int32) -> Int { Int(Glibc.read(fd, base, capacity)) }

  /// writev(2) of `range` of `first` then `range` of `second` as one write; the byte count, or -1
  /// with errno set (EINTR retried).
  public static func writev(fd: Int32, _ first: PacketBuffer, _ a: Range<Int>, _ second: PacketBuffer, _ b: Range<Int>)
    -> Int
  {
    precondition(first.contains(a) && second.contains(b))
    var iov = [
      iovec(iov_base: first.base + a.lowerBound, iov_len: a.count),
      iovec(iov_base: second.base + b.lowerBound, iov_len: b.count),
    ]
    while true {
      let n = Glibc.writev(fd, &iov, 2)
      if n < 0 && errno == EINTR { continue }
      return n
    }
  }
}

/// A Linux TAP device's file descriptor (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, non-blocking).
public enum TapDevice {
  // linux/if_tun.h
  static let TUNSETIFF: UInt = 0x4004_54ca
  static let TUNSETVNETHDRSZ: UInt = 0x4004_54d8
  static let IFF_TAP: Int16 = 0x0002
  static let IFF_NO_PI: Int16 = 0x1000
  static let IFF_VNET_HDR: Int16 = 0x4000

  /// Opens (creating if needed) the TAP device `name` (1...15 bytes) with a `headerLength`-byte
  /// virtio-net header on every frame. Needs CAP_NET_ADMIN.
  public static func open(name: String, headerLength: Int32) throws(SystemError) -> OwnedFD {
    guard !name.isEmpty, name.utf8.count < 16 else { throw SystemError("TAP name must be 1...15 bytes", errno: EINVAL) }
    let raw = Glibc.open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK)
    guard raw >= 0 else { throw SystemError.current("open(/dev/net/tun)") }
    let fd = OwnedFD(taking: raw)
    // struct ifreq: char ifr_name[16]; union { short ifr_flags; ... } (40 bytes in all).
    var ifr = [UInt8](repeating: 0, count: 40)
    for (i, b) in name.utf8.enumerated() { ifr[i] = b }
    let flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
    ifr[16] = UInt8(truncatingIfNeeded: flags)
    ifr[17] = UInt8(truncatingIfNeeded: flags >> 8)
    let r = ifr.withUnsafeMutableBytes { ioctl(raw, TUNSETIFF, $0.baseAddress!) }
    guard r == 0 else { throw SystemError.current("TUNSETIFF \(name)") }
    var size = headerLength
    guard ioctl(raw, TUNSETVNETHDRSZ, &size) == 0 else { throw SystemError.current("TUNSETVNETHDRSZ") }
    return fd
  }

  /// Waits up to `milliseconds` for the descriptor to be readable.
  public static func waitReadable(_ fd: Int32, milliseconds: Int32) -> Bool {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return poll(&p, 1, milliseconds) > 0
  }
}
