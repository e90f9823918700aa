import VhostProtocol

/// virtio-net device feature bits.
public enum NetFeature {
  public static let csum = VirtioFeatures(bit: 0)
  public static let guestCsum = VirtioFeatures(bit: 1)
  public static let mtu = VirtioFeatures(bit: 3)
  public static let mac = VirtioFeatures(bit: 5)
  public static let mrgRxbuf = VirtioFeatures(bit: 15)
  public static let status = VirtioFeatures(bit: 16)
  public static let ctrlVq = VirtioFeatures(bit: 17)
  public static let guestAnnounce = VirtioFeatures(bit: 21)
  public static let mq = VirtioFeatures(bit: 22)
}

/// Ethernet constants the switch needs.
enum Ethernet {
  static let headerLength = 14
  /// A VLAN tag may follow the addresses.
  static let vlanLength = 4
  /// The largest frame (without FCS) for `mtu`.
  static func maxFrame(mtu: Int) -> Int { mtu + headerLength + vlanLength }
}

/// `struct virtio_net_hdr` (with `num_buffers`: `virtio_net_hdr_mrg_rxbuf`), little-endian:
/// flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16, csum_offset u16, num_buffers u16.
public struct NetHeader: Sendable, Equatable {
  public static let needsCsum: UInt8 = 1
  public static let dataValid: UInt8 = 2
  public static let gsoNone: UInt8 = 0

  public var flags: UInt8 = 0
  public var gsoType: UInt8 = 0
  public var hdrLen: UInt16 = 0
  public var gsoSize: UInt16 = 0
  public var csumStart: UInt16 = 0
  public var csumOffset: UInt16 = 0
  public var numBuffers: UInt16 = 0

  public init() {}

  /// The header length for `features`: 12 bytes with VERSION_1 or MRG_RXBUF, else 10.
  public static func length(for features: VirtioFeatures) -> Int {
    features.contains(.version1) || features.contains(NetFeature.mrgRxbuf) ? 12 : 10
  }

  /// Parses the first 10 or 12 bytes of `bytes` (which must hold that many).
  public init(_ bytes: UnsafeRawBufferPointer) {
    func u16(_ at: Int) -> UInt16 { UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8 }
    flags = bytes[0]
    gsoType = bytes[1]
    hdrLen = u16(2)
    gsoSize = u16(4)
    csumStart = u16(6)
    csumOffset = u16(8)
    numBuffers = bytes.count >= 12 ? u16(10) : 0
  }

  /// Writes the header's first `length` bytes (10 or 12) into `out`.
  public func write(to out: UnsafeMutableRawBufferPointer, length: Int) {
    func put(_ v: UInt16, _ at: Int) {
      out[at] = UInt8(truncatingIfNeeded: v)
      out[at + 1] = UInt8(truncatingIfNeeded: v >> 8)
    }
    out[0] = flags
    out[1] = gsoType
    put(hdrLen, 2)
    put(gsoSize, 4)
    put(csumStart, 6)
    put(csumOffset, 8)
    if length >= 12 { put(numBuffers, 10) }
  }

  /// The header's bytes.
  public func bytes(length: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: length)
    out.withUnsafeMutableBytes { write(to: $0, length: length) }
    return out
  }

  /// Why a transmitted header is refused for a frame of `frameLength` bytes, or nil if it is fine.
  /// csum_start/csum_offset must point inside the frame (CVE-2024-11614: an offset beyond it made
  /// DPDK read and write out of bounds).
  func problem(frameLength: Int, csumNegotiated: Bool) -> NetDropReason? {
    if gsoType != Self.gsoNone { return .unsupportedGSO }
    if flags & Self.needsCsum != 0 {
      guard csumNegotiated else { return .unnegotiatedChecksum }
      let start = Int(csumStart)
      guard start >= Ethernet.headerLength, start + Int(csumOffset) + 2 <= frameLength else {
        return .badChecksumOffsets
      }
    }
    return nil
  }
}

/// Completes a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM) in place: the ones' complement sum
/// of `frame[start...]`, folded and complemented, stored at `start + offset` (where the driver left
/// the pseudo-header sum). The caller checked the offsets.
func completeChecksum(_ frame: UnsafeMutableRawBufferPointer, start: Int, offset: Int) {
  var sum: UInt64 = 0
  var i = start
  let end = frame.count
  while i + 1 < end {
    sum &+= UInt64(frame[i]) << 8 | UInt64(frame[i + 1])
    i += 2
  }
  if i < end { sum &+= UInt64(frame[i]) << 8 }
  while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
  var result = ~UInt16(truncatingIfNeeded: sum)
  if result == 0 { result = 0xffff }  // CSUM_MANGLED_0, as the kernel's skb_checksum_help
  frame[start + offset] = UInt8(truncatingIfNeeded: result >> 8)
  frame[start + offset + 1] = UInt8(truncatingIfNeeded: result)
}

/// Why a frame was dropped (counted per port).
public enum NetDropReason: String, Sendable, CaseIterable, CustomStringConvertible {
  /// The chain is shorter than the virtio-net header (or empty).
  case missingHeader = "missing-header"
  /// Fewer bytes than an Ethernet header after the virtio-net header.
  case runt
  /// A frame larger than the MTU allows.
  case oversize
  /// csum_start/csum_offset outside the frame.
  case badChecksumOffsets = "bad-csum-offsets"
  /// NEEDS_CSUM without VIRTIO_NET_F_CSUM negotiated.
  case unnegotiatedChecksum = "csum-not-negotiated"
  /// A GSO type (no GSO feature is offered).
  case unsupportedGSO = "gso"
  /// The driver's receive buffer cannot hold the frame.
  case rxBufferTooSmall = "rx-buffer-too-small"
  /// The receive ring ran out of buffers in the middle of a frame (mergeable buffers).
  case rxRingExhausted = "rx-ring-exhausted"
  /// The port's queue of frames waiting for receive buffers is full.
  case rxQueueFull = "rx-queue-full"
  /// No port takes the frame (unknown port down, or the destination is the sender).
  case noDestination = "no-destination"
  /// The port is not running (no front-end, or its rings are stopped).
  case portDown = "port-down"
  /// A TAP write failed.
  case tapWrite = "tap-write"

  public var description: String { rawValue }
}
