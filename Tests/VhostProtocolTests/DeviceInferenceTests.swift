import Testing
import VhostProtocol

/// Feature words seen from real back-ends on this machine, and crafted overlaps.
private let cases: [(features: UInt64, expected: VirtioDeviceType?)] = [
  (0x1_7500_7e46, .blk),  // qemu-storage-daemon 7.2
  (0x5_7400_6644, .blk),  // our blk
  (0x5_7400_6664, .blk),  // our blk --read-only: BLK_RO is bit 5, NET_MAC's bit
  (0x220, .blk),  // read-only (5) + flush (9), nothing else
  (0x1_7020_8020, .net),  // MRG_RXBUF (15) + MAC (5)
  (0x20, .net),  // MAC alone
  (0x1_0001_0000, .net),  // STATUS (16)
  (0x201, .net),  // CSUM (0) + GUEST_ECN (9, also BLK_FLUSH)
  (0x1_4000_0000, nil),  // rng: transport bits only
]

@Suite struct DeviceInferenceTests {
  @Test("the device type follows from the feature bits; overlapping bits (5 = NET_MAC / BLK_RO) do not mislead")
  func infer() {
    for c in cases {
      let got = VirtioDeviceType(inferringFrom: VirtioFeatures(rawValue: c.features))
      #expect(got == c.expected, "0x\(String(c.features, radix: 16))")
    }
  }
}
