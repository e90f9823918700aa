import ArgumentParser
import VhostProtocol
import VhostSystem
import VhostTools

#if canImport(Glibc)
  import Glibc
#endif

struct Trace: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Relay a front-end and a back-end, printing every vhost-user message between them.",
    discussion: """
      Listens on --listen; for each front-end that connects (e.g. QEMU's chardev), connects to the back-end \
      at --connect and relays both ways, passing every message and descriptor on unchanged. One line per \
      message: time (seconds since start), connection, direction (F→B, B→F; BC B→F and BC F→B on the \
      back-end channel, which is tapped with the tracer's own socket pair), request, flags, decoded payload, \
      descriptor count. When either side closes, the other is closed and the next front-end is awaited. \
      Ends on SIGINT/SIGTERM.
      """)

  @Option(help: "Listen on this Unix socket path for the front-end.") var listen: String
  @Option(help: "The back-end's socket.") var connect: String
  @Flag(help: "Print JSON lines instead of text.") var json = false
  @Option(help: "Write the trace to this file instead of standard output.") var log: String?
  @Option(help: "Device type for naming feature bits (blk, net, rng); inferred from GET_FEATURES if omitted.")
  var device: String?

  func run() throws {
    var type: VirtioDeviceType?
    if let device {
      guard let t = VirtioDeviceType(rawValue: device) else { throw ValidationError("unknown device type \(device)") }
      type = t
    }
    let writer: TraceWriter
    do {
      writer = try TraceWriter(path: log, json: json)
    } catch {
      throw CLIError("cannot open the log: \(error)")
    }
    let tracer: Tracer
    do {
      tracer = try Tracer(listenPath: listen, connectPath: connect, device: type) { writer.write($0) }
    } catch {
      throw CLIError("cannot listen on \(listen): \(error)")
    }
    DaemonSignals.start(onTerminate: { _ in tracer.stop() })
    tracer.run()
    tracer.stopAndWait()
    unlink(listen)
  }
}
