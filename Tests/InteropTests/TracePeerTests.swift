import Foundation
import Testing
import VhostFrontend
import VhostProtocol
import VhostSystem
import VhostTooling
import VhostTools

/// The tracer between real peers: the conversation works exactly as without it, and the trace
/// shows it.
@Suite(.serialized)
struct TracePeerTests {
  /// Every line of a JSON trace file, parsed.
  static func jsonLines(_ path: String) throws -> [[String: Any]] {
    let text = try String(contentsOfFile: path, encoding: .utf8)
    return try text.split(separator: "\n").map { line in
      let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
      return try #require(object as? [String: Any], "not a JSON object: \(line)")
    }
  }

  /// Expects each of `requests` in the trace, in `direction`.
  static func expectRequests(
    _ trace: TraceCollector, _ requests: [String], _ direction: TraceDirection = .frontToBack,
    sourceLocation: SourceLocation = #_sourceLocation
  ) {
    for r in requests {
      #expect(
        !trace.messages(r, direction).isEmpty, "no \(direction.rawValue) \(r) in the trace:\n\(trace.text)",
        sourceLocation: sourceLocation)
    }
  }

  @Test("our BlkDriver → tracer → qemu-storage-daemon: data written and read back; the trace shows the setup")
  func qemuStorageDaemon() throws {
    let dir = try TemporaryDirectory()
    guard let (qsd, image, socket) = try QemuStorageDaemonTests.start(dir) else { return }
    defer { qsd.stop() }
    let logPath = dir.file("trace.jsonl")
    let trace = TraceCollector(writer: try TraceWriter(path: logPath, json: true))
    let tracePath = dir.file("trace.sock")
    let tracer = try Tracer(listenPath: tracePath, connectPath: socket, sink: trace.sink)
    tracer.startInBackground()
    defer { tracer.stopAndWait() }

    do {
      let connection = try VhostUserConnection.connect(path: tracePath, retryMilliseconds: 5000)
      defer { connection.close() }
      let frontend = connection.device()
      let state = try frontend.negotiate()
      #expect(state.protocolFeatures.contains(.replyAck))
      let device = try DeviceDriver(
        frontend: frontend, features: BlkDriver.defaultFeatures, queueCount: 1, queueSize: 128,
        memorySize: 8 << 20)
      let config = try BlkConfig(bytes: try frontend.getConfig(size: BlkConfig.size))
      #expect(config.capacity * 512 == UInt64(QemuStorageDaemonTests.imageSize))
      let blk = try BlkDriver(device: device)
      let offsets: [UInt64] = [0, 7 << 20 + 4096, 40 << 20 + 512]
      for (i, offset) in offsets.enumerated() {
        try blk.write(offset: offset, data: pattern(1 << 20, seed: UInt8(i + 11)))
      }
      try blk.flush()
      for (i, offset) in offsets.enumerated() {
        let expected = pattern(1 << 20, seed: UInt8(i + 11))
        #expect(try blk.read(offset: offset, length: 1 << 20) == expected, "read-back mismatch at \(offset)")
        #expect(try readFile(image, offset: offset, count: 1 << 20) == expected, "image differs at \(offset)")
      }
      _ = try device.stop()
    }
    #expect(trace.wait(seconds: 10) { _ in tracer.activeConnections == 0 }, "the relays did not end")

    Self.expectRequests(
      trace,
      [
        "GET_FEATURES", "SET_FEATURES", "GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES", "SET_OWNER",
        "SET_MEM_TABLE", "SET_VRING_NUM", "SET_VRING_ADDR", "SET_VRING_BASE", "SET_VRING_KICK", "SET_VRING_CALL",
        "GET_CONFIG", "GET_VRING_BASE",
      ])
    Self.expectRequests(trace, ["GET_FEATURES", "GET_PROTOCOL_FEATURES", "GET_CONFIG", "GET_VRING_BASE"], .backToFront)
    let table = trace.messages("SET_MEM_TABLE", .frontToBack)
    #expect(table.count == 1 && table.first?.fds == 1, "\(trace.text)")
    #expect(table.first?.text.contains("nregions=1 regions=[{gpa=0x0 size=0x800000 uva=0x") == true)
    #expect(trace.messages("SET_VRING_KICK", .frontToBack).first?.fds == 1)
    let offer = trace.messages("GET_FEATURES", .backToFront).first
    #expect(offer?.text.contains("BLK_FLUSH") == true && offer?.text.contains("VERSION_1") == true)
    #expect(trace.messages("GET_PROTOCOL_FEATURES", .backToFront).first?.text.contains("REPLY_ACK") == true)
    if acked(trace, "BACKEND_REQ") {
      #expect(trace.messages("SET_BACKEND_REQ_FD").first?.note == "back-end channel tapped", "\(trace.text)")
    }

    // The JSON log holds the same events, one object per line.
    let lines = try Self.jsonLines(logPath)
    #expect(lines.count == trace.events.count)
    let kick = lines.first { $0["request"] as? String == "SET_VRING_KICK" }
    #expect(kick?["dir"] as? String == "F→B")
    #expect(kick?["fds"] as? Int == 1)
    #expect((kick?["payload"] as? [String: Any])?["index"] as? Int == 0)
  }

  /// Whether SET_PROTOCOL_FEATURES in the trace acked `name`.
  func acked(_ trace: TraceCollector, _ name: String) -> Bool {
    trace.messages("SET_PROTOCOL_FEATURES").first?.text.contains(name) == true
  }

  @Test("QEMU 7.2 guest → tracer → our blk back-end: the guest's dd test passes; the trace has the negotiation")
  func qemuGuest() throws {
    guard let s = try GuestBlkTests.setup() else { return }
    let backend = try GuestBlkTests.startBackend(s)
    defer { backend.stop() }
    let trace = TraceCollector(writer: try TraceWriter(path: s.dir.file("trace.txt")))
    let tracePath = s.dir.file("trace.sock")
    let tracer = try Tracer(listenPath: tracePath, connectPath: s.socket, sink: trace.sink)
    tracer.startInBackground()
    defer { tracer.stopAndWait() }
    let viaTracer = GuestBlkTests.Setup(
      dir: s.dir, kernel: s.kernel, binary: s.binary, image: s.image, socket: tracePath)
    let out = try GuestBlkTests.boot(viaTracer, script: GuestBlkTests.ddScript)
    let data = GuestBlkTests.field(out, "DATA-MD5")
    #expect(data != nil, "guest output:\n\(out.suffix(3000))\ntrace:\n\(trace.text.suffix(3000))")
    #expect(!out.contains("WRITE-FAILED") && !out.contains("READ-FAILED"), "\(out.suffix(2000))")
    #expect(GuestBlkTests.field(out, "BACK-MD5") == data)
    #expect(try GuestBlkTests.md5(s.image, offset: 3 << 20, count: 16 << 20) == data, "image range differs")

    Self.expectRequests(
      trace,
      [
        "GET_FEATURES", "GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES", "GET_QUEUE_NUM", "SET_BACKEND_REQ_FD",
        "SET_OWNER", "GET_CONFIG", "SET_FEATURES", "SET_VRING_NUM", "SET_VRING_ADDR", "SET_VRING_BASE",
        "SET_VRING_KICK", "SET_VRING_CALL", "SET_VRING_ENABLE",
      ])
    Self.expectRequests(trace, ["GET_FEATURES", "GET_PROTOCOL_FEATURES", "GET_CONFIG"], .backToFront)
    // Our back-end offers INFLIGHT_SHMFD; QEMU's vhost-user-blk then shares an inflight area.
    if acked(trace, "INFLIGHT_SHMFD") {
      Self.expectRequests(trace, ["GET_INFLIGHT_FD", "SET_INFLIGHT_FD"])
      #expect(trace.messages("GET_INFLIGHT_FD", .backToFront).first?.fds == 1)
      #expect(trace.messages("SET_INFLIGHT_FD", .frontToBack).first?.fds == 1)
    }
    #expect(trace.messages("SET_BACKEND_REQ_FD").first?.note == "back-end channel tapped")
    // The memory table: with CONFIGURE_MEM_SLOTS (our back-end offers it) QEMU adds each region with
    // ADD_MEM_REG, one fd each; otherwise one SET_MEM_TABLE with one fd per region.
    let memoryRequest = acked(trace, "CONFIGURE_MEM_SLOTS") ? "ADD_MEM_REG" : "SET_MEM_TABLE"
    let memory = trace.messages(memoryRequest, .frontToBack)
    #expect(!memory.isEmpty && memory.allSatisfy { $0.fds >= 1 }, "\(trace.text)")
    #expect(memory.first?.text.contains("gpa=0x0 size=") == true)
    let config = trace.messages("GET_CONFIG", .backToFront).first
    #expect(config?.text.contains("bytes=00000200") == true, "64 MiB = 0x20000 sectors: \(config?.text ?? "-")")
  }

  @Test("QEMU reconnect=1 through the tracer: kill -9 the back-end mid-write; QEMU reconnects, nothing is lost")
  func qemuReconnect() throws {
    guard let s = try GuestBlkTests.setup(imageMiB: 64) else { return }
    var backend = try GuestBlkTests.startBackend(s)
    defer { backend.stop() }
    let trace = TraceCollector(writer: try TraceWriter(path: s.dir.file("trace.txt")))
    let tracePath = s.dir.file("trace.sock")
    let tracer = try Tracer(listenPath: tracePath, connectPath: s.socket, sink: trace.sink)
    tracer.startInBackground()
    defer { tracer.stopAndWait() }
    let initramfs = try GuestVM.buildInitramfs(
      script: """
        dd if=/dev/urandom of=/tmp/pat bs=1M count=1 2>/dev/null
        echo "PAT-MD5 $(md5sum < /tmp/pat)"
        echo LOOP-START
        errors=0
        i=0
        while [ $i -lt 48 ]; do
          dd if=/tmp/pat of=/dev/vda bs=1M count=1 seek=$i oflag=direct 2>/dev/null || errors=$((errors+1))
          echo "W $i"
          i=$((i+1))
        done
        echo "LOOP-DONE errors=$errors"
        """, makeInitramfs: makeInitramfsScript, in: s.dir.path)
    let vm = try GuestVM(
      kernel: s.kernel, initramfs: initramfs,
      deviceArgs: [
        "-chardev", "socket,id=c0,path=\(tracePath),reconnect=1", "-device", "vhost-user-blk-pci,chardev=c0",
      ],
      log: s.dir.file("guest.log"))
    #expect(vm.process.waitForOutput("W 8", milliseconds: 120_000), "\(vm.output.suffix(2000))")
    backend.signal(SIGKILL)
    backend.waitExit(milliseconds: 5000)
    #expect(!vm.output.contains("LOOP-DONE"), "the guest finished before the back-end was killed")
    backend = try GuestBlkTests.startBackend(s, log: "backend2.log")
    #expect(vm.waitExit(seconds: 180), "guest did not finish:\n\(vm.output.suffix(3000))")
    let out = vm.output
    #expect(out.contains("LOOP-DONE errors=0"), "\(out.suffix(3000))\ntrace:\n\(trace.text.suffix(3000))")
    #expect(!out.contains("I/O error"), "\(out.suffix(3000))")
    let pattern = GuestBlkTests.field(out, "PAT-MD5")
    #expect(pattern != nil)
    for i in 0..<48 {
      #expect(try GuestBlkTests.md5(s.image, offset: i << 20, count: 1 << 20) == pattern, "block \(i) differs")
    }

    // The first connection ended with the back-end; a later one set the device up again, inflight
    // area included.
    let notices = trace.events.compactMap { e -> TraceNotice? in
      if case .notice(let n) = e { return n }
      return nil
    }
    #expect(
      notices.contains { $0.connection == 1 && $0.event == "closed" && $0.detail.contains("back-end closed") },
      "\(trace.text.suffix(3000))")
    let later = trace.messages.filter { $0.connection > 1 }
    for r in ["GET_FEATURES", "SET_INFLIGHT_FD", "SET_VRING_BASE", "SET_VRING_KICK"] {
      #expect(later.contains { $0.request == r }, "no \(r) after reconnecting:\n\(trace.text.suffix(3000))")
    }
    #expect(tracer.connectionsAccepted >= 2)
  }

  @Test("DPDK virtio_user txonly → tracer → DPDK vhost PMD rxonly: packets flow; the trace shows the negotiation")
  func dpdk() throws {
    guard Peers.require("dpdk-testpmd", package: "dpdk") != nil else { return }
    let dir = try TemporaryDirectory()
    let socket = dir.file("vhost.sock")
    let tag = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    guard
      let pmd = try startTestpmd(
        vdev: "net_vhost0,iface=\(socket),queues=1", forward: "rxonly", lcores: "0@0,1@1", filePrefix: "trvh\(tag)",
        log: dir.file("vhost-pmd.log"))
    else { return }
    defer { pmd.stop() }
    #expect(pmd.waitForFile(socket, milliseconds: 30_000), "testpmd did not create its socket: \(pmd.output)")
    let trace = TraceCollector(writer: try TraceWriter(path: dir.file("trace.txt")))
    let tracePath = dir.file("trace.sock")
    let tracer = try Tracer(listenPath: tracePath, connectPath: socket, sink: trace.sink)
    tracer.startInBackground()
    defer { tracer.stopAndWait() }
    guard
      let user = try startTestpmd(
        vdev: "net_virtio_user0,path=\(tracePath),queues=1", forward: "txonly", lcores: "0@1,1@0",
        filePrefix: "trvu\(tag)", log: dir.file("virtio-user.log"), extra: ["--txpkts=64"])
    else { return }
    defer { user.stop() }
    let flowing = DPDKVirtioUserTests.waitUntil(seconds: 60) { (testpmdCounter(pmd.output, "RX-packets") ?? 0) > 0 }
    let why =
      "the vhost PMD received nothing\nvhost PMD:\n\(pmd.output.suffix(1500))\nvirtio_user:\n"
      + "\(user.output.suffix(1500))\ntrace:\n\(trace.text.suffix(3000))"
    #expect(flowing, "\(why)")
    user.stop()
    #expect(trace.wait(seconds: 10) { _ in tracer.activeConnections == 0 }, "the relays did not end")
    let received = testpmdCounter(pmd.output, "RX-packets") ?? 0
    #expect(received > 0)

    Self.expectRequests(
      trace,
      [
        "GET_FEATURES", "SET_FEATURES", "GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES", "SET_OWNER",
        "SET_MEM_TABLE", "SET_VRING_NUM", "SET_VRING_ADDR", "SET_VRING_BASE", "SET_VRING_KICK", "SET_VRING_CALL",
      ])
    Self.expectRequests(trace, ["GET_FEATURES", "GET_PROTOCOL_FEATURES"], .backToFront)
    let offer = trace.messages("GET_FEATURES", .backToFront).first
    #expect(offer?.text.contains("NET_MRG_RXBUF") == true, "net features by name: \(offer?.text ?? "-")")
    #expect(trace.messages("SET_MEM_TABLE", .frontToBack).first.map { $0.fds >= 1 } == true)
    #expect(Set(trace.messages("SET_VRING_KICK", .frontToBack).compactMap { $0.field("index") }).count >= 2)
  }
}
