import CVhostShim

#if canImport(Glibc)
  import Glibc
#endif

/// A disk image or block device opened for a block back-end. It is never truncated or extended.
public final class BlockFile: @unchecked Sendable {
  public let fd: OwnedFD
  /// Size in bytes.
  public let size: UInt64
  public let readOnly: Bool
  public let direct: Bool
  /// Alignment O_DIRECT needs for offsets, lengths and buffers.
  public let alignment = 4096

  /// open(2) with O_CLOEXEC (O_RDONLY or O_RDWR, optionally O_DIRECT); size from lseek(SEEK_END),
  /// which works for regular files and block devices alike.
  public init(path: String, readOnly: Bool, direct: Bool) throws(SystemError) {
    var flags = O_CLOEXEC | (readOnly ? O_RDONLY : O_RDWR)
    if direct { flags |= _cvh_o_direct() }
    let raw = try syscall("open(\(path))") { open(path, flags) }
    fd = OwnedFD(taking: raw)
    let end = try syscall("lseek(\(path), SEEK_END)") { lseek(raw, 0, SEEK_END) }
    size = UInt64(end)
    self.readOnly = readOnly
    self.direct = direct
  }

  /// pread(2) of `count` bytes at `fileOffset` into `memory` at `offset` (through an aligned bounce
  /// buffer when O_DIRECT is on).
  public func read(into memory: SharedMemory, at offset: UInt64, count: Int, fileOffset: UInt64) throws(SystemError) {
    if direct {
      let buffer = try AlignedBuffer(count: count, alignment: alignment)
      try transferAll(count, "pread") { done in
        pread(fd.rawValue, buffer.pointer + done, count - done, off_t(fileOffset) + off_t(done))
      }
      do {
        try memory.write(from: UnsafeRawBufferPointer(start: buffer.pointer, count: count), at: offset)
      } catch {
        throw SystemError("copy to guest memory", errno: EFAULT)
      }
      return
    }
    try memory.withRegion(offset: offset, count: count) { p throws(SystemError) in
      try transferAll(count, "pread") { done in
        pread(fd.rawValue, p + done, count - done, off_t(fileOffset) + off_t(done))
      }
    }
  }

  /// pwrite(2) of `count` bytes from `memory` at `offset` to `fileOffset`.
  public func write(from memory: SharedMemory, at offset: UInt64, count: Int, fileOffset: UInt64) throws(SystemError) {
    if direct {
      let buffer = try AlignedBuffer(count: count, alignment: alignment)
      do {
        try memory.read(at: offset, into: UnsafeMutableRawBufferPointer(start: buffer.pointer, count: count))
      } catch {
        throw SystemError("copy from guest memory", errno: EFAULT)
      }
      try transferAll(count, "pwrite") { done in
        pwrite(fd.rawValue, buffer.pointer + done, count - done, off_t(fileOffset) + off_t(done))
      }
      return
    }
    try memory.withRegion(offset: offset, count: count) { p throws(SystemError) in
      try transferAll(count, "pwrite") { done in
        pwrite(fd.rawValue, p + done, count - done, off_t(fileOffset) + off_t(done))
      }
    }
  }

  private func transferAll(_ count: Int, _ what: String, _ op: (Int) -> Int) throws(SystemError) {
    var done = 0
    while done < count {
      let n = op(done)
      if n < 0 {
        if errno == EINTR { continue }
        throw .current(what)
      }
      if n == 0 { throw SystemError(what + " (unexpected end of file)", errno: EIO) }
      done += n
    }
  }

  /// fdatasync(2).
  public func flush() throws(SystemError) { _ = try syscall("fdatasync") { fdatasync(fd.rawValue) } }

  /// Deallocates (`punch`) or zeroes a range, keeping the size; falls back to writing zeros.
  public func zero(fileOffset: UInt64, count: UInt64, punch: Bool) throws(SystemError) {
    if _cvh_fallocate(fd.rawValue, punch ? 1 : 0, Int64(fileOffset), Int64(count)) == 0 { return }
    let chunk = 1 << 20
    let buffer = try AlignedBuffer(count: chunk, alignment: alignment)
    memset(buffer.pointer, 0, chunk)
    var done: UInt64 = 0
    while done < count {
      let n = Int(min(UInt64(chunk), count - done))
      try transferAll(n, "pwrite(zeros)") { d in
        pwrite(fd.rawValue, buffer.pointer + d, n - d, off_t(fileOffset + done) + off_t(d))
      }
      done += UInt64(n)
    }
  }
}

/// posix_memalign'd scratch memory, freed on deinit.
final class AlignedBuffer {
  let pointer: UnsafeMutableRawPointer
  init(count: Int, alignment: Int) throws(SystemError) {
    var p: UnsafeMutableRawPointer?
    let size = max((count + alignment - 1) / alignment * alignment, alignment)
    guard posix_memalign(&p, alignment, size) == 0, let p else { throw SystemError("posix_memalign", errno: ENOMEM) }
    pointer = p
  }
  deinit { free(pointer) }
}
