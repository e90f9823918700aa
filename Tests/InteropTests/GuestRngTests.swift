import Foundation
import Testing
import VhostBackend
import VhostDevices
import VhostSystem
import VhostTooling

/// The path of scripts/make-initramfs.sh in this checkout.
let makeInitramfsScript: String = {
  var url = URL(fileURLWithPath: #filePath)
  for _ in 0..<3 { url.deleteLastPathComponent() }
  return url.appendingPathComponent("scripts/make-initramfs.sh").path
}()

/// Runs a back-end server in this process on a background thread.
final class InProcessBackend: Sendable {
  let server: BackendServer

  init(device: VhostUserDevice, socket: String, configuration: BackendConfiguration = .init()) throws {
    server = BackendServer(listener: try UnixListener(path: socket), device: device, configuration: configuration)
    server.startInBackground()
  }

  func stop() { server.stopAndWait() }
}

@Suite(.serialized)
struct GuestRngTests {
  @Test("QEMU 7.2 guest (TCG) reads 64 KiB from /dev/hwrng through our vhost-user-rng back-end (--poll)")
  func guestReadsHwrng() throws {
    guard Peers.require("qemu-system-x86_64", package: "qemu-system-x86") != nil else { return }
    guard let kernel = GuestVM.kernel else {
      if Peers.required { Issue.record("no /boot/vmlinuz-*: install linux-image-amd64") }
      return
    }
    let dir = try TemporaryDirectory()
    let initramfs = try GuestVM.buildInitramfs(
      script: """
        cat /sys/class/misc/hw_random/rng_current
        dd if=/dev/hwrng of=/tmp/r bs=4096 count=16 2>/dev/null
        echo "RNG-BYTES $(wc -c < /tmp/r)"
        echo "RNG-MD5 $(md5sum < /tmp/r)"
        """, makeInitramfs: makeInitramfsScript, in: dir.path)
    let device = RngDevice()
    var configuration = BackendConfiguration()
    configuration.poll = true  // QEMU 7.2 under TCG does not forward rng kicks (PEERS.md)
    let socket = dir.file("rng.sock")
    let backend = try InProcessBackend(device: device, socket: socket, configuration: configuration)
    defer { backend.stop() }
    let vm = try GuestVM(
      kernel: kernel, initramfs: initramfs,
      deviceArgs: ["-chardev", "socket,id=c2,path=\(socket)", "-device", "vhost-user-rng-pci,chardev=c2"],
      log: dir.file("guest.log"))
    #expect(vm.waitExit(seconds: 120), "guest did not power off:\n\(vm.output.suffix(3000))")
    let out = vm.output
    #expect(out.contains("virtio_rng"), "the guest's hwrng is not virtio-rng:\n\(out.suffix(2000))")
    #expect(out.contains("RNG-BYTES 65536"), "guest output:\n\(out.suffix(2000))")
    #expect(out.contains("GUEST-TEST-EXIT 0"))
    #expect(device.bytesServed >= 65536, "back-end served \(device.bytesServed) bytes")
    #expect(device.requestsServed >= 1)
  }
}
