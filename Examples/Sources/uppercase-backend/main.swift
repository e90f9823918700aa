import UppercaseDevice
import VhostBackend
import VhostSystem

#if canImport(Glibc)
  import Glibc
#endif

// uppercase-backend SOCKET: serves the uppercase device on SOCKET until killed.
let arguments = CommandLine.arguments
guard arguments.count == 2 else {
  print("usage: uppercase-backend SOCKET")
  exit(64)
}
do {
  let server = BackendServer(listener: try UnixListener(path: arguments[1]), device: UppercaseDevice())
  server.run()
} catch {
  print("uppercase-backend: \(error)")
  exit(1)
}
