import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// A child process (a peer such as qemu-storage-daemon or testpmd) in its own session, so that it
/// and everything it starts can be ended together. Output goes to a log file.
public final class ManagedProcess: @unchecked Sendable {
  public let process = Process()
  public let logPath: String
  public let name: String

  /// Starts `executable` with `arguments` under `setsid`, logging stdout+stderr to `logPath`.
  public init(_ executable: String, _ arguments: [String], logPath: String, environment: [String: String]? = nil)
    throws
  {
    name = (executable as NSString).lastPathComponent
    self.logPath = logPath
    _ = FileManager.default.createFile(atPath: logPath, contents: nil)
    let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
    process.executableURL = URL(fileURLWithPath: "/usr/bin/setsid")
    process.arguments = [executable] + arguments
    process.standardOutput = log
    process.standardError = log
    process.standardInput = FileHandle.nullDevice
    if let environment { process.environment = environment }
    try process.run()
  }

  public var pid: Int32 { process.processIdentifier }
  public var isRunning: Bool { process.isRunning }

  /// The log so far.
  public var output: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

  /// Sends `signal` to the whole process group.
  public func signal(_ signal: Int32) { kill(-pid, signal) }

  /// SIGTERM to the group, then SIGKILL if it has not exited within `graceMilliseconds`.
  public func stop(graceMilliseconds: Int = 3000) {
    guard process.isRunning else { return }
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
    while process.isRunning && Date() < end { usleep(10_000) }
    return !process.isRunning
  }

  /// Waits until `path` exists (a peer's socket) or the process dies or time runs out.
  public func waitForFile(_ path: String, milliseconds: Int) -> Bool {
    let end = Date().addingTimeInterval(Double(milliseconds) / 1000)
    while Date() < end {
      if FileManager.default.fileExists(atPath: path) { return true }
      if !process.isRunning { return false }
      usleep(20_000)
    }
    return false
  }

  /// Waits until the log contains `text`.
  public func waitForOutput(_ text: String, milliseconds: Int) -> Bool {
    let end = Date().addingTimeInterval(Double(milliseconds) / 1000)
    while Date() < end {
      if output.contains(text) { return true }
      if !process.isRunning { return output.contains(text) }
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
    var template = Array((NSTemporaryDirectory() + "/\(prefix).XXXXXX").utf8CString)
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
public func startQemuStorageDaemon(image: String, socket: String, log: String, numQueues: Int = 1,
  writable: Bool = true) throws -> ManagedProcess?
{
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
