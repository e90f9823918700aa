import Testing
import UppercaseDevice
import VhostBackend
import VhostFrontend
import VhostProtocol
import VhostSystem
import Virtqueue

#if canImport(Glibc)
  import Glibc
#endif

@Test("the uppercase device, served by BackendServer, answers our front-end over a real socket")
func uppercaseOverVhostUser() throws {
  let path = "/tmp/vhost-examples-\(getpid()).sock"
  let server = BackendServer(listener: try UnixListener(path: path), device: UppercaseDevice())
  server.startInBackground()
  defer {
    server.stopAndWait()
    unlink(path)
  }
  let connection = try VhostUserConnection.connect(
    path: path, configuration: FrontendConfiguration(), retryMilliseconds: 2000)
  defer { connection.close() }
  let driver = try DeviceDriver(
    frontend: connection.device(), features: .version1, queueCount: 1, queueSize: 64)
  let queue = driver.queues[0]
  let input = Array("vhost-user from another package: 42!".utf8)
  let readable = try driver.allocate(input.count)
  let writable = try driver.allocate(64)
  try driver.memory.memory.write(input, at: readable)
  _ = try queue.ring.add([
    DriverBuffer(guestAddress: driver.memory.gpa(readable), length: UInt32(input.count), deviceWritable: false),
    DriverBuffer(guestAddress: driver.memory.gpa(writable), length: 64, deviceWritable: true),
  ])
  try queue.notifyIfNeeded()
  let used = try queue.waitUsed(timeoutMilliseconds: 5000)
  #expect(used.count == 1)
  #expect(used.first?.length == UInt32(input.count))
  let output = try driver.memory.memory.read(at: writable, count: input.count)
  #expect(output == Array("VHOST-USER FROM ANOTHER PACKAGE: 42!".utf8))
  #expect(output == UppercaseDevice.uppercased(input))
}
