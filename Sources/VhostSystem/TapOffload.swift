import CVhostShim

extension TapDevice {
  /// TUNSETOFFLOAD with TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN: the kernel may hand
  /// the TAP's reader partial checksums and TCP GSO frames of up to 64 KiB (described by the
  /// virtio-net header) instead of cutting them into MTU-sized frames first.
  public static func enableTCPOffloads(_ fd: Int32) throws(SystemError) {
    guard _cvh_tun_set_offload(fd, _cvh_tun_tcp_offloads()) == 0 else {
      throw SystemError.current("TUNSETOFFLOAD")
    }
  }
}
