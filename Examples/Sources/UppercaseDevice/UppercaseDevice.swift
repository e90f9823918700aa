import VhostBackend
import VhostProtocol
import Virtqueue

/// A one-queue device that answers every chain with its readable bytes in upper case (ASCII),
/// written into its writable part — a device of its own, built from outside on the public API.
public final class UppercaseDevice: VhostUserDevice {
  public let type = "uppercase"
  public var features: VirtioFeatures { .version1 }

  public init() {}

  public func process(_ queue: QueueHandle) {
    while let chain = queue.next() {
      var reader = chain.reader()
      let bytes = reader.read(reader.remaining)
      var writer = chain.writer(log: queue.log)
      writer.write(Self.uppercased(bytes))
      queue.complete(chain, written: writer.written)
    }
    queue.notifyIfNeeded()
  }

  /// ASCII a–z to A–Z; every other byte as it is.
  public static func uppercased(_ bytes: [UInt8]) -> [UInt8] {
    bytes.map { (0x61...0x7a).contains($0) ? $0 - 0x20 : $0 }
  }
}
