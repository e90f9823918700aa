import CVhostShim
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Why an access to shared memory was refused.
public struct MemoryAccessError: Error, Hashable, Sendable, CustomStringConvertible {
  public var offset: UInt64
  public var length: UInt64
  public var size: UInt64
  public init(offset: UInt64, length: UInt64, size: UInt64) {
    self.offset = offset
    self.length = length
    self.size = size
  }
  public var description: String { "access of \(length) bytes at offset \(offset) is outside a \(size)-byte mapping" }
}

/// A MAP_SHARED mapping of a file descriptor (memfd, guest RAM region, dirty log, inflight area).
/// Every access is bounds-checked; pointers never leave this type.
public final class SharedMemory: @unchecked Sendable {
  /// The descriptor backing the mapping.
  public let fd: OwnedFD
  /// Mapped length in bytes.
  public let size: Int
  /// Offset into `fd` where the mapping starts.
  public let fileOffset: UInt64
  @usableFromInline let base: UnsafeMutableRawPointer

  /// Creates a memfd of `size` bytes and maps it read-write (the front-end's guest memory, a log, ...).
  public convenience init(anonymous name: String, size: Int) throws(SystemError) {
    let raw = try syscall("memfd_create(\(name))") { _cvh_memfd_create(name, 1) }
    let fd = OwnedFD(taking: raw)
    _ = try syscall("ftruncate(\(size))") { ftruncate(fd.rawValue, off_t(size)) }
    try self.init(mapping: fd, size: size, offset: 0)
  }

  /// Maps `size` bytes of `fd` starting at `offset`. The offset need not be page aligned: the
  /// mapping starts at the page below it. For a regular file (memfd, tmpfs, hugetlbfs) the range must
  /// lie inside the file — touching a mapping beyond its end raises SIGBUS — and the file's size is
  /// sealed when it allows sealing, so the peer cannot shrink it under us afterwards.
  public init(mapping fd: OwnedFD, size: Int, offset: UInt64, writable: Bool = true) throws(SystemError) {
    guard size > 0, offset <= UInt64(Int64.max) - UInt64(size) else { throw SystemError("mmap", errno: EINVAL) }
    var fileSize: Int64 = 0
    let regular = _cvh_regular_size(fd.rawValue, &fileSize)
    if regular < 0 { throw SystemError.current("fstat") }
    if regular == 1 {
      guard offset + UInt64(size) <= UInt64(max(fileSize, 0)) else {
        throw SystemError("mmap: \(size) bytes at offset \(offset) exceed the \(fileSize)-byte file", errno: EINVAL)
      }
      _ = _cvh_seal_size(fd.rawValue)
    }
    let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))
    let aligned = offset & ~(page - 1)
    let delta = Int(offset - aligned)
    let prot = PROT_READ | (writable ? PROT_WRITE : 0)
    let p = mmap(nil, size + delta, prot, MAP_SHARED, fd.rawValue, off_t(aligned))
    guard let p, p != MAP_FAILED else { throw SystemError.current("mmap(\(size) bytes at offset \(offset))") }
    self.fd = fd
    self.size = size
    self.fileOffset = offset
    self.base = p + delta
    self.mappingDelta = delta
  }

  private let mappingDelta: Int

  deinit { munmap(base - mappingDelta, size + mappingDelta) }

  /// The mapping's address in this process (what a front-end sends as `userspace_addr`).
  public var address: UInt64 { UInt64(UInt(bitPattern: base)) }

  @inlinable @inline(__always)
  func check(_ offset: UInt64, _ length: Int) throws(MemoryAccessError) {
    guard length >= 0, offset <= UInt64(size), UInt64(length) <= UInt64(size) - offset else {
      throw MemoryAccessError(offset: offset, length: UInt64(max(length, 0)), size: UInt64(size))
    }
  }

  /// Whether `[offset, offset+length)` lies inside the mapping.
  public func contains(offset: UInt64, length: UInt64) -> Bool {
    offset <= UInt64(size) && length <= UInt64(size) - offset
  }

  public func read(at offset: UInt64, count: Int) throws(MemoryAccessError) -> [UInt8] {
    try check(offset, count)
    return [UInt8](UnsafeRawBufferPointer(start: base + Int(offset), count: count))
  }

  /// Copies bytes out into `buffer`.
  public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(MemoryAccessError) {
    try check(offset, buffer.count)
    if let dst = buffer.baseAddress { dst.copyMemory(from: base + Int(offset), byteCount: buffer.count) }
  }

  public func write(_ bytes: some Collection<UInt8>, at offset: UInt64) throws(MemoryAccessError) {
    try check(offset, bytes.count)
    // Arrays and slices: one memcpy.
    let copied: Void? = bytes.withContiguousStorageIfAvailable { src in
      if let p = src.baseAddress { (base + Int(offset)).copyMemory(from: p, byteCount: src.count) }
    }
    if copied != nil { return }
    var i = Int(offset)
    for b in bytes {
      base.storeBytes(of: b, toByteOffset: i, as: UInt8.self)
      i += 1
    }
  }

  /// Copies bytes in from `buffer`.
  public func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(MemoryAccessError) {
    try check(offset, buffer.count)
    if let src = buffer.baseAddress { (base + Int(offset)).copyMemory(from: src, byteCount: buffer.count) }
  }

  /// Runs `body` with a pointer to `[offset, offset+count)` after checking the bounds (for I/O
  /// syscalls that read or write guest buffers in place). The pointer must not escape.
  func withRegion(offset: UInt64, count: Int, _ body: (UnsafeMutableRawPointer) throws(SystemError) -> Void)
    throws(SystemError)
  {
    guard count >= 0, offset <= UInt64(size), UInt64(count) <= UInt64(size) - offset else {
      throw SystemError("guest buffer outside its mapping", errno: EFAULT)
    }
    try body(base + Int(offset))
  }

  public func fill(_ byte: UInt8, at offset: UInt64, count: Int) throws(MemoryAccessError) {
    try check(offset, count)
    memset(base + Int(offset), Int32(byte), count)
  }

  // Inlinable so that the ring code in other modules gets them specialized (unspecialized, each
  // access went through generic metadata lookups: a quarter of a busy ring's time).
  @inlinable
  public func load<T: FixedWidthInteger>(_: T.Type = T.self, at offset: UInt64) throws(MemoryAccessError) -> T {
    try check(offset, MemoryLayout<T>.size)
    return T(littleEndian: base.loadUnaligned(fromByteOffset: Int(offset), as: T.self))
  }

  @inlinable
  public func store<T: FixedWidthInteger>(_ value: T, at offset: UInt64) throws(MemoryAccessError) {
    try check(offset, MemoryLayout<T>.size)
    base.storeBytes(of: value.littleEndian, toByteOffset: Int(offset), as: T.self)
  }

  /// Acquire-load of a naturally aligned little-endian u16 (ring indices).
  public func loadAcquire16(at offset: UInt64) throws(MemoryAccessError) -> UInt16 {
    try check(offset, 2)
    guard offset % 2 == 0 else { throw MemoryAccessError(offset: offset, length: 2, size: UInt64(size)) }
    let p = UnsafePointer<Atomic<UInt16>>(OpaquePointer(base + Int(offset)))
    return UInt16(littleEndian: p.pointee.load(ordering: .acquiring))
  }

  /// Release-store of a naturally aligned little-endian u16 (ring indices).
  public func storeRelease16(_ value: UInt16, at offset: UInt64) throws(MemoryAccessError) {
    try check(offset, 2)
    guard offset % 2 == 0 else { throw MemoryAccessError(offset: offset, length: 2, size: UInt64(size)) }
    let p = UnsafePointer<Atomic<UInt16>>(OpaquePointer(base + Int(offset)))
    p.pointee.store(value.littleEndian, ordering: .releasing)
  }

  /// Atomically ORs `mask` into the byte at `offset` (dirty-log bitmap).
  public func atomicOr8(_ mask: UInt8, at offset: UInt64) throws(MemoryAccessError) {
    try check(offset, 1)
    let p = UnsafePointer<Atomic<UInt8>>(OpaquePointer(base + Int(offset)))
    p.pointee.bitwiseOr(mask, ordering: .relaxed)
  }

  /// Hints the CPU to fetch the cache line at `offset` (for writing when `write`); offsets outside
  /// the mapping are ignored. A hint only: nothing is read or written.
  @inlinable
  public func prefetch(at offset: UInt64, write: Bool = false) {
    guard offset < UInt64(size) else { return }
    _cvh_prefetch(base + Int(offset), write ? 1 : 0)
  }

  /// A full memory barrier (between publishing buffers and reading the other side's flags).
  public static func fullFence() { atomicMemoryFence(ordering: .sequentiallyConsistent) }
}
