import VhostBackend
import VhostProtocol
import VhostSystem
import Virtqueue

/// virtio-rng: one queue; every device-writable buffer is filled with bytes from getrandom(2).
public final class RngDevice: VhostUserDevice, @unchecked Sendable {
  public let type = "rng"
  public var features: VirtioFeatures { .version1 }
  public init() {}

  /// Bytes served so far.
  public private(set) var bytesServed = 0
  public private(set) var requestsServed = 0

  public func process(_ queue: QueueHandle) {
    while let chain = queue.next() {
      let want = min(chain.writableLength, 64 << 10)
      var writer = chain.writer(log: queue.log)
      writer.write(systemRandomBytes(want))
      queue.complete(chain, written: writer.written)
      bytesServed += writer.written
      requestsServed += 1
    }
    queue.notifyIfNeeded()
  }
}
