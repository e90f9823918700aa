import CVhostShim
import FoundationEssentials
import VhostSystem

#if canImport(Glibc)
  import Glibc
#endif

/// A child process (a peer such as qemu-storage-daemon or testpmd) in its own process group, with
/// an empty signal mask and default signal handling whatever the parent blocks, so that it and
/// everything it starts can be ended together. Output goes to a log file.
public final class ManagedProcess: @unchecked Sendable {
  public let logPath: String
  public let name: String
  public let pid: Int32
  private let lock = Lock()
  private var exitStatus: Int32?

  /// Starts `executable` with `arguments`, logging stdout+stderr to `logPath`.
  public init(_ executable: String, _ arguments: [String], logPath: String) throws {
    name = String(executable.split(separator: "/").last ?? Substring(executable))
    self.logPath = logPath
    let log = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard log >= 0 else { throw SystemError.current("open(\(logPath))") }
    defer { close(log) }
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    let pid = _cvh_spawn(executable, argv, log)
    guard pid > 0 else { throw SystemError.current("posix_spawn(\(executable))") }
    self.pid = pid
  }

  /// Whether the child is still running (reaps it once it has exited).
  public var isRunning: Bool {
    lock.withLock {
      if exitStatus != nil { return false }
      var status: Int32 = 0
      let r = waitpid(pid, &status, WNOHANG)
      if r == pid || (r < 0 && errno == ECHILD) {
        exitStatus = status
        return false
      }
      return true
    }
  }

  /// The raw wait status once exited.
  public var waitStatus: Int32? {
    _ = isRunning
    return lock.withLock { exitStatus }
  }

  /// The log so far.
  public var output: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

  /// Sends `signal` to the whole process group.
  public func signal(_ signal: Int32) { kill(-pid, signal) }

  /// SIGTERM to the group, then SIGKILL if it has not exited within `graceMilliseconds`.
  public func stop(graceMilliseconds: Int = 3000) {
    guard isRunning else { return }
    signal(SIGTERM)
    if !waitExit(milliseconds: graceMilliseconds) {
      signal(SIGKILL)
      _ = waitExit(milliseconds: 5000)
    }
  }

  /// Waits for exit up to `milliseconds`; true if it exited.
  @discardableResult
  public func waitExit(milliseconds: Int) -> Bool {
    let end = Date().addingTimeInterval(Double(milliseconds) / 1000)
    while isRunning && Date() < end { usleep(10_000) }
    return !isRunning
  }

  /// Waits until `path` exists (a peer's socket) or the process dies or time runs out.
  public func waitForFile(_ path: String, milliseconds: Int) -> Bool {
    let end = Date().addingTimeInterval(Double(milliseconds) / 1000)
    while Date() < end {
      if FileManager.default.fileExists(atPath: path) { return true }
      if !isRunning { return false }
      usleep(20_000)
    }
    return false
  }

  /// Waits until the log contains `text`.
  public func waitForOutput(_ text: String, milliseconds: Int) -> Bool {
    let end = Date().addingTimeInterval(Double(milliseconds) / 1000)
    while Date() < end {
      if output.contains(text) { return true }
      if !isRunning { return output.contains(text) }
      usleep(50_000)
    }
    return false
  }

  deinit { stop(graceMilliseconds: 1000) }
}

/// A temporary directory removed when this object goes away.
public final class TemporaryDirectory: @unchecked Sendable {
  public let path: String
  public init(prefix: String = "vhost-user") throws {
    var template = Array(((ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp") + "/\(prefix).XXXXXX").utf8CString)
    guard let p = mkdtemp(&template) else { throw CocoaError(.fileWriteUnknown) }
    path = String(cString: p)
  }
  public func file(_ name: String) -> String { path + "/" + name }
  deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Finds an executable on PATH (and in /usr/sbin, /usr/bin).
public func findExecutable(_ name: String) -> String? {
  let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
  for dir in path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/sbin", "/sbin", "/bin"] {
    let candidate = dir + "/" + name
    if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
  }
  return nil
}

/// Starts qemu-storage-daemon exporting `image` as a vhost-user-blk socket at `socket`.
public func startQemuStorageDaemon(
  image: String, socket: String, log: String, numQueues: Int = 1,
  writable: Bool = true
) throws -> ManagedProcess? {
  guard let qsd = findExecutable("qemu-storage-daemon") else { return nil }
  let p = try ManagedProcess(
    qsd,
    [
      "--blockdev", "driver=file,node-name=d0,filename=\(image),cache.direct=off",
      "--export",
      "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=\(socket),writable=\(writable ? "on" : "off"),num-queues=\(numQueues)",
    ], logPath: log)
  return p
}

/// DPDK's PMD directory on Debian 12 (DPDK 22.11).
public var dpdkPMDDirectory: String {
  let candidates = ["/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0", "/usr/lib/aarch64-linux-gnu/dpdk/pmds-23.0"]
  return candidates.first { FileManager.default.fileExists(atPath: $0) } ?? candidates[0]
}

/// Starts dpdk-testpmd with one vdev on one forwarding core. `vdev` is e.g.
/// `net_vhost0,iface=/tmp/s,queues=1`; `forward` a testpmd forwarding mode.
public func startTestpmd(
  vdev: String, forward: String, lcores: String = "0@0,1@1", filePrefix: String,
  log: String, extra: [String] = []
) throws -> ManagedProcess? {
  guard let testpmd = findExecutable("dpdk-testpmd") else { return nil }
  let d = dpdkPMDDirectory
  let args =
    [
      "--lcores", lcores, "-d", "\(d)/librte_net_vhost.so", "-d", "\(d)/librte_net_virtio.so",
      "-d", "\(d)/librte_mempool_ring.so", "--no-pci", "--no-huge", "-m", "1024", "--file-prefix=\(filePrefix)",
      "--vdev", vdev, "--", "--total-num-mbufs=16384", "--forward-mode=\(forward)", "--stats-period", "1",
    ] + extra
  return try ManagedProcess(testpmd, args, logPath: log)
}

/// The last "RX-packets: N" (or TX-packets) figure testpmd printed for port 0.
public func testpmdCounter(_ output: String, _ field: String = "RX-packets") -> Int? {
  var last: Int?
  let key = field + ":"
  for line in output.split(separator: "\n") {
    var rest = line[...]
    while let start = rest.firstRange(of: key) {
      rest = rest[start.upperBound...]
      let digits = rest.drop { $0 == " " }.prefix { $0.isNumber }
      if let n = Int(digits) { last = n }
    }
  }
  return last
}

/// A QEMU guest under TCG booting the host's kernel with a test initramfs; its serial console is
/// the process log.
public final class GuestVM: @unchecked Sendable {
  public let process: ManagedProcess

  /// The newest /boot/vmlinuz-*.
  public static var kernel: String? {
    let files = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
    return files.filter { $0.hasPrefix("vmlinuz-") }.sorted().last.map { "/boot/" + $0 }
  }

  /// Builds an initramfs running `script` (busybox sh) with `makeInitramfs` (scripts/make-initramfs.sh).
  public static func buildInitramfs(script: String, makeInitramfs: String, in dir: String) throws -> String {
    let scriptPath = dir + "/guest-test.sh"
    try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
    let out = dir + "/initramfs.gz"
    let p = try ManagedProcess("/bin/bash", [makeInitramfs, out, scriptPath], logPath: dir + "/initramfs.log")
    guard p.waitExit(milliseconds: 120_000), p.waitStatus == 0 else { throw CocoaError(.fileWriteUnknown) }
    return out
  }

  /// Boots `kernel` + `initramfs` with `memoryMiB` of shared memfd RAM and `deviceArgs`
  /// (chardevs and devices).
  public init(
    kernel: String, initramfs: String, memoryMiB: Int = 256, deviceArgs: [String], log: String,
    smp: Int = 1
  ) throws {
    guard let qemu = findExecutable("qemu-system-x86_64") else { throw CocoaError(.fileNoSuchFile) }
    let args =
      [
        "-accel", "tcg", "-m", "\(memoryMiB)", "-smp", "\(smp)",
        "-object", "memory-backend-memfd,id=mem,size=\(memoryMiB)M,share=on", "-numa", "node,memdev=mem",
        "-kernel", kernel, "-initrd", initramfs, "-append", "console=ttyS0 panic=-1 quiet",
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot", "-nic", "none",
      ] + deviceArgs
    process = try ManagedProcess(qemu, args, logPath: log)
  }

  public var output: String { process.output }

  /// Waits for the guest to power off (or the timeout); true if it exited.
  public func waitExit(seconds: Double) -> Bool { process.waitExit(milliseconds: Int(seconds * 1000)) }

  deinit { process.stop(graceMilliseconds: 500) }
}
