import Foundation
import Testing
import VhostTooling

/// The `vhost-user` executable built next to this test bundle.
let vhostUserBinary: String? = {
  var url = URL(fileURLWithPath: ProcessInfo.processInfo.arguments[0]).deletingLastPathComponent()
  for _ in 0..<4 {
    let candidate = url.appendingPathComponent("vhost-user").path
    if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    url.deleteLastPathComponent()
  }
  var root = URL(fileURLWithPath: #filePath)
  for _ in 0..<3 { root.deleteLastPathComponent() }
  let fallback = root.appendingPathComponent(".build/debug/vhost-user").path
  return FileManager.default.isExecutableFile(atPath: fallback) ? fallback : nil
}()

/// QEMU 7.2 guests (TCG) using our vhost-user-blk back-end (the `vhost-user blk` process).
@Suite(.serialized)
struct GuestBlkTests {
  struct Setup {
    let dir: TemporaryDirectory
    let kernel: String
    let binary: String
    let image: String
    let socket: String
  }

  static func setup(imageMiB: Int = 64) throws -> Setup? {
    guard Peers.require("qemu-system-x86_64", package: "qemu-system-x86") != nil else { return nil }
    guard let kernel = GuestVM.kernel else {
      if Peers.required { Issue.record("no /boot/vmlinuz-*: install linux-image-amd64") }
      return nil
    }
    guard let binary = vhostUserBinary else {
      Issue.record("the vhost-user executable was not built next to the tests")
      return nil
    }
    let dir = try TemporaryDirectory()
    let image = dir.file("disk.img")
    _ = FileManager.default.createFile(atPath: image, contents: nil)
    let h = try FileHandle(forWritingTo: URL(fileURLWithPath: image))
    try h.truncate(atOffset: UInt64(imageMiB) << 20)
    try h.close()
    return Setup(dir: dir, kernel: kernel, binary: binary, image: image, socket: dir.file("blk.sock"))
  }

  static func startBackend(_ s: Setup, _ extra: [String] = [], log: String = "backend.log") throws -> ManagedProcess {
    let p = try ManagedProcess(
      s.binary, ["blk", "--socket-path", s.socket, "--blk-file", s.image] + extra, logPath: s.dir.file(log))
    #expect(p.waitForFile(s.socket, milliseconds: 10_000), "back-end did not start: \(p.output)")
    return p
  }

  static func boot(
    _ s: Setup, script: String, device: String = "", chardev: String = "", smp: Int = 1,
    seconds: Double = 180
  ) throws -> String {
    let initramfs = try GuestVM.buildInitramfs(script: script, makeInitramfs: makeInitramfsScript, in: s.dir.path)
    let vm = try GuestVM(
      kernel: s.kernel, initramfs: initramfs,
      deviceArgs: [
        "-chardev", "socket,id=c0,path=\(s.socket)\(chardev)", "-device", "vhost-user-blk-pci,chardev=c0\(device)",
      ], log: s.dir.file("guest.log"), smp: smp)
    #expect(vm.waitExit(seconds: seconds), "guest did not power off:\n\(vm.output.suffix(3000))")
    return vm.output
  }

  /// md5 of `count` bytes of a file at `offset` (hex), using the host's md5sum.
  static func md5(_ path: String, offset: Int, count: Int) throws -> String {
    let bytes = try readFile(path, offset: UInt64(offset), count: count)
    let tmp = path + ".range"
    try Data(bytes).write(to: URL(fileURLWithPath: tmp))
    defer { try? FileManager.default.removeItem(atPath: tmp) }
    let p = try ManagedProcess("/usr/bin/md5sum", [tmp], logPath: tmp + ".md5")
    p.waitExit(milliseconds: 10_000)
    return String(p.output.prefix(32))
  }

  static func field(_ output: String, _ key: String) -> String? {
    for line in output.split(whereSeparator: \.isNewline) {
      let l = line.trimmingCharacters(in: .whitespacesAndNewlines)
      if l.hasPrefix(key + " ") { return String(l.dropFirst(key.count + 1).prefix(32)) }
    }
    return nil
  }

  static let ddScript = """
    dd if=/dev/urandom of=/tmp/data bs=1M count=16 2>/dev/null
    echo "DATA-MD5 $(md5sum < /tmp/data)"
    dd if=/tmp/data of=/dev/vda bs=1M count=16 seek=3 oflag=direct 2>/dev/null || echo WRITE-FAILED
    dd if=/dev/vda of=/tmp/back bs=1M count=16 skip=3 iflag=direct 2>/dev/null || echo READ-FAILED
    echo "BACK-MD5 $(md5sum < /tmp/back)"
    """

  func checkDD(queues: Int) throws {
    guard let s = try Self.setup() else { return }
    let backend = try Self.startBackend(s, ["--num-queues", "\(queues)"])
    defer { backend.stop() }
    let out = try Self.boot(
      s,
      script: "cat /sys/block/vda/mq/*/nr_tags >/dev/null 2>&1; echo \"QUEUES $(ls /sys/block/vda/mq | wc -l)\"\n"
        + Self.ddScript,
      device: queues > 1 ? ",num-queues=\(queues)" : "", smp: queues > 1 ? 2 : 1)
    let data = Self.field(out, "DATA-MD5")
    #expect(data != nil, "guest output:\n\(out)")
    #expect(!out.contains("WRITE-FAILED") && !out.contains("READ-FAILED"), "\(out.suffix(2000))")
    #expect(Self.field(out, "BACK-MD5") == data)
    #expect(try Self.md5(s.image, offset: 3 << 20, count: 16 << 20) == data, "image range differs from guest data")
    if queues > 1 { #expect(Self.field(out, "QUEUES").map { Int($0) ?? 0 } ?? 0 >= 2, "\(out.suffix(1500))") }
  }

  @Test("guest writes 16 MiB with dd (O_DIRECT), reads it back; image range matches")
  func ddOneQueue() throws { try checkDD(queues: 1) }

  @Test("the same with num-queues=4")
  func ddFourQueues() throws { try checkDD(queues: 4) }

  @Test("read-only export: the guest's write fails and the image is unchanged")
  func readOnly() throws {
    guard let s = try Self.setup() else { return }
    try makeImage(s.image, size: 64 << 20)
    let before = try Self.md5(s.image, offset: 0, count: 64 << 20)
    let backend = try Self.startBackend(s, ["--read-only"])
    defer { backend.stop() }
    let out = try Self.boot(
      s,
      script: """
        echo "RO $(cat /sys/block/vda/ro)"
        dd if=/dev/urandom of=/dev/vda bs=4096 count=4 oflag=direct 2>/dev/null && echo WRITE-OK || echo WRITE-REFUSED
        dd if=/dev/vda of=/tmp/x bs=1M count=1 iflag=direct 2>/dev/null && echo "READ-MD5 $(md5sum < /tmp/x)"
        """)
    #expect(out.contains("RO 1"), "\(out.suffix(1500))")
    #expect(out.contains("WRITE-REFUSED"), "\(out.suffix(1500))")
    #expect(Self.field(out, "READ-MD5") == (try Self.md5(s.image, offset: 0, count: 1 << 20)))
    #expect(try Self.md5(s.image, offset: 0, count: 64 << 20) == before)
  }

  @Test("guest makes an ext2 filesystem, writes files, unmounts; host e2fsck -n is clean")
  func filesystem() throws {
    guard let s = try Self.setup() else { return }
    guard let e2fsck = Peers.require("e2fsck", package: "e2fsprogs") else { return }
    let backend = try Self.startBackend(s)
    defer { backend.stop() }
    let out = try Self.boot(
      s,
      script: """
        echo "write through" > /sys/block/vda/cache_type || echo CACHE-WRITE-FAILED
        echo "CACHE $(cat /sys/block/vda/cache_type)"
        mke2fs -q /dev/vda || echo MKFS-FAILED
        mount -t ext2 /dev/vda /mnt || echo MOUNT-FAILED
        dd if=/dev/urandom of=/mnt/big bs=1M count=4 2>/dev/null
        for i in 1 2 3 4 5 6 7 8; do echo "file $i" > /mnt/f$i; done
        mkdir /mnt/dir && cp /mnt/big /mnt/dir/copy
        echo "BIG-MD5 $(md5sum < /mnt/big)"
        sync
        umount /mnt || echo UMOUNT-FAILED
        echo FS-DONE
        """)
    #expect(out.contains("FS-DONE") && !out.contains("FAILED"), "\(out.suffix(2000))")
    // CONFIG_WCE through QEMU: the guest switched the disk to writethrough (QEMU forwards the
    // writeback byte with SET_CONFIG and keeps it only if the back-end accepted it).
    #expect(out.contains("CACHE write through"), "\(out.suffix(2000))")
    let check = try ManagedProcess(e2fsck, ["-n", "-f", s.image], logPath: s.dir.file("fsck.log"))
    #expect(check.waitExit(milliseconds: 60_000))
    #expect(check.waitStatus == 0, "e2fsck reported problems:\n\(check.output)")
  }

  @Test(
    "reconnect: kill -9 the back-end while the guest writes; nothing is lost (split and packed rings)",
    arguments: [false, true])
  func reconnect(packed: Bool) throws {
    guard let s = try Self.setup(imageMiB: 128) else { return }
    var backend = try Self.startBackend(s)
    defer { backend.stop() }
    let initramfs = try GuestVM.buildInitramfs(
      script: """
        dd if=/dev/urandom of=/tmp/pat bs=1M count=1 2>/dev/null
        echo "PAT-MD5 $(md5sum < /tmp/pat)"
        echo LOOP-START
        errors=0
        i=0
        while [ $i -lt 96 ]; do
          dd if=/tmp/pat of=/dev/vda bs=1M count=1 seek=$i oflag=direct 2>/dev/null || errors=$((errors+1))
          echo "W $i"
          i=$((i+1))
        done
        echo "LOOP-DONE errors=$errors"
        """, makeInitramfs: makeInitramfsScript, in: s.dir.path)
    let vm = try GuestVM(
      kernel: s.kernel, initramfs: initramfs,
      deviceArgs: [
        "-chardev", "socket,id=c0,path=\(s.socket),reconnect=1",
        "-device", "vhost-user-blk-pci,chardev=c0\(packed ? ",packed=on" : "")",
      ],
      log: s.dir.file("guest.log"))
    #expect(vm.process.waitForOutput("LOOP-START", milliseconds: 120_000), "\(vm.output.suffix(2000))")
    // Let some writes happen, then kill the back-end hard and start a new one on the same socket.
    #expect(vm.process.waitForOutput("W 8", milliseconds: 60_000))
    backend.signal(SIGKILL)
    backend.waitExit(milliseconds: 5000)
    #expect(!vm.output.contains("LOOP-DONE"), "the guest finished before the back-end was killed")
    backend = try Self.startBackend(s, ["--verbose"], log: "backend2.log")
    #expect(vm.waitExit(seconds: 180), "guest did not finish:\n\(vm.output.suffix(3000))")
    let out = vm.output
    #expect(out.contains("LOOP-DONE errors=0"), "\(out.suffix(3000))")
    #expect(backend.output.contains("front-end connected"), "QEMU never reconnected: \(backend.output)")
    #expect(!out.contains("I/O error"), "\(out.suffix(3000))")
    let pattern = Self.field(out, "PAT-MD5")
    #expect(pattern != nil)
    for i in 0..<96 {
      #expect(try Self.md5(s.image, offset: i << 20, count: 1 << 20) == pattern, "block \(i) differs")
    }
  }
}
