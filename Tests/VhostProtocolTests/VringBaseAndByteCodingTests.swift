import Testing
import VhostProtocol

@Suite("VringBase packing")
struct VringBaseTests {
  @Test("Split ring: num is the 16-bit avail index")
  func split() {
    let base = VringBase(split: 0x1234)
    #expect(base.num(packed: false) == 0x1234)
    #expect(VringBase(num: 0x1234, packed: false) == base)
    #expect(VringBase(num: 0x1234, packed: false).availIndex == 0x1234)
    #expect(VringBase(num: 0xffff, packed: false).num(packed: false) == 0xffff)
    // Bits 16–31 are reserved for split rings and not part of the index.
    #expect(VringBase(num: 0xabcd_1234, packed: false).availIndex == 0x1234)
    #expect(!base.availWrap && !base.usedWrap && base.usedIndex == 0)
  }

  @Test("Packed ring: bits 0–14 avail, 15 avail wrap, 16–30 used, 31 used wrap")
  func packedLayout() {
    let base = VringBase(packedAvail: 0x1234, availWrap: true, used: 0x0567, usedWrap: true)
    #expect(base.num(packed: true) == 0x8567_9234)
    #expect(VringBase(num: 0x8567_9234, packed: true) == base)

    #expect(VringBase(packedAvail: 0, availWrap: true, used: 0, usedWrap: false).num(packed: true) == 0x0000_8000)
    #expect(VringBase(packedAvail: 0, availWrap: false, used: 0, usedWrap: true).num(packed: true) == 0x8000_0000)
    #expect(VringBase(packedAvail: 0x7fff, availWrap: false, used: 0, usedWrap: false).num(packed: true) == 0x7fff)
    #expect(VringBase(packedAvail: 0, availWrap: false, used: 0x7fff, usedWrap: false).num(packed: true) == 0x7fff_0000)

    let decoded = VringBase(num: 0x0001_8003, packed: true)
    #expect(decoded.availIndex == 3)
    #expect(decoded.availWrap)
    #expect(decoded.usedIndex == 1)
    #expect(!decoded.usedWrap)
    #expect(decoded.num(packed: true) == 0x0001_8003)
  }

  @Test("Packed indices are masked to 15 bits")
  func packedMasking() {
    let base = VringBase(packedAvail: 0xffff, availWrap: false, used: 0x8001, usedWrap: false)
    #expect(base.availIndex == 0x7fff)
    #expect(base.usedIndex == 0x0001)
    #expect(base.num(packed: true) == 0x0001_7fff)
  }

  @Test("Packed round trip over a spread of values")
  func packedRoundTrip() {
    var rng = XorShift64(seed: 7)
    for _ in 0..<1000 {
      let num = UInt32(truncatingIfNeeded: rng.next())
      #expect(VringBase(num: num, packed: true).num(packed: true) == num)
      #expect(VringBase(num: num, packed: false).num(packed: false) == num & 0xffff)
    }
  }
}

@Suite("Byte coding")
struct ByteCodingTests {
  @Test("ByteWriter emits the host's native byte order")
  func writerIsNativeOrder() {
    func native<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }
    var w = ByteWriter()
    w.write(UInt8(0x01))
    w.write(UInt16(0x0203))
    w.write(UInt32(0x0405_0607))
    w.write(UInt64(0x0809_0a0b_0c0d_0e0f))
    #expect(
      w.bytes == native(UInt8(0x01)) + native(UInt16(0x0203)) + native(UInt32(0x0405_0607))
        + native(UInt64(0x0809_0a0b_0c0d_0e0f)))
  }

  @Test("ByteWriter is little-endian on this host", .enabled(if: littleEndianHost))
  func writerLittleEndian() {
    var w = ByteWriter()
    w.write(UInt16(0x0203))
    w.write(UInt32(0x0405_0607))
    w.write(UInt64(0x0809_0a0b_0c0d_0e0f))
    w.pad(2)
    w.write(bytes: [0xaa])
    #expect(w.bytes == hex("03 02 | 07 06 05 04 | 0f 0e 0d 0c 0b 0a 09 08 | 00 00 | aa"))
  }

  @Test("ByteReader reads the host's native byte order")
  func readerIsNativeOrder() throws {
    let bytes =
      withUnsafeBytes(of: UInt32(0xdead_beef)) { Array($0) } + withUnsafeBytes(of: UInt16(0x1234)) { Array($0) }
    var r = ByteReader(bytes)
    #expect(try r.read(UInt32.self) == 0xdead_beef)
    #expect(try r.read(UInt16.self) == 0x1234)
    #expect(r.remaining == 0)
  }

  @Test("Writer and reader round-trip")
  func roundTrip() throws {
    var w = ByteWriter()
    w.write(UInt8(0xfe))
    w.write(UInt16(0xbeef))
    w.write(UInt32(0xdead_beef))
    w.write(UInt64.max - 1)
    w.write(Int32(-2))
    var r = ByteReader(w.bytes)
    #expect(try r.read(UInt8.self) == 0xfe)
    #expect(try r.read(UInt16.self) == 0xbeef)
    #expect(try r.read(UInt32.self) == 0xdead_beef)
    #expect(try r.read(UInt64.self) == .max - 1)
    #expect(try r.read(Int32.self) == -2)
    #expect(r.remaining == 0)
  }

  @Test("ByteReader bounds-checks every read")
  func readerBounds() throws {
    var r = ByteReader([1, 2, 3])
    #expect(throws: ProtocolError.truncated(needed: 4, available: 3)) { try r.read(UInt32.self) }
    #expect(r.offset == 0)
    #expect(try r.read(UInt16.self) != 0)
    #expect(throws: ProtocolError.truncated(needed: 4, available: 3)) { try r.read(UInt16.self) }
    #expect(throws: ProtocolError.self) { try r.read(count: 2) }
    #expect(throws: ProtocolError.self) { try r.read(count: -1) }
    #expect(throws: ProtocolError.self) { try r.skip(2) }
    #expect(try r.read(count: 1) == [3])
    #expect(try r.read(count: 0) == [])
    #expect(throws: ProtocolError.self) { try r.read(UInt8.self) }
    var empty = ByteReader([], offset: 0)
    #expect(throws: ProtocolError.truncated(needed: 8, available: 0)) { try empty.read(UInt64.self) }
  }
}
