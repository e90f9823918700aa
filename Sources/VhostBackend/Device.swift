import VhostProtocol
import Virtqueue

/// A virtio device served over vhost-user. Implement this and hand it to `BackendServer`; the
/// framework handles the protocol, memory, rings and notifications.
///
/// ```swift
/// final class Rng: VhostUserDevice {
///   let type = "rng"
///   var features: VirtioFeatures { .version1 }
///   func process(_ queue: QueueHandle) {
///     while let chain = queue.next() {
///       var w = chain.writer(log: queue.log)
///       w.write(randomBytes(chain.writableLength))
///       queue.complete(chain, written: w.written)
///     }
///     queue.notifyIfNeeded()
///   }
/// }
/// ```
///
/// Threading: `process` runs on the queue's worker thread, one call per queue at a time; the other
/// methods run on the connection's control thread. Devices that share state between queues or with
/// the control thread must protect it.
public protocol VhostUserDevice: AnyObject, Sendable {
  /// The `type` of `--print-capabilities` ("block", "net", "rng", ...).
  var type: String { get }
  /// Device features offered (VERSION_1 and device bits). The framework adds the ring features it
  /// implements (INDIRECT_DESC, EVENT_IDX, RING_PACKED), PROTOCOL_FEATURES and LOG_ALL.
  var features: VirtioFeatures { get }
  /// Device-specific protocol features to offer besides the framework's (e.g. RARP, MTU).
  var extraProtocolFeatures: ProtocolFeatures { get }
  /// Number of virtqueues.
  var queueCount: Int { get }
  /// Largest queue size accepted.
  var maxQueueSize: Int { get }
  /// Config space bytes (GET_CONFIG reads a window of these).
  func readConfig() -> [UInt8]
  /// SET_CONFIG; throw to refuse (read-only fields).
  func writeConfig(offset: Int, bytes: [UInt8], migration: Bool) throws
  /// The front-end acknowledged `features`.
  func featuresAcknowledged(_ features: VirtioFeatures)
  /// Handles the available chains of one queue.
  func process(_ queue: QueueHandle)
  /// Back to power-on state (new connection, RESET_DEVICE, RESET_OWNER).
  func reset()
  /// SEND_RARP (net).
  func sendRARP(mac: [UInt8]) throws
  /// NET_SET_MTU (net).
  func setMTU(_ mtu: UInt16) throws
  /// Device state for DEVICE_STATE migration.
  func saveState() -> [UInt8]
  func loadState(_ bytes: [UInt8]) throws
  /// Extra `--print-capabilities` features.
  var capabilityFeatures: [String] { get }
}

/// A device refused a request.
public struct DeviceError: Error, CustomStringConvertible, Sendable {
  public let description: String
  public init(_ description: String) { self.description = description }
}

extension VhostUserDevice {
  public var extraProtocolFeatures: ProtocolFeatures { [] }
  public var queueCount: Int { 1 }
  public var maxQueueSize: Int { 1024 }
  public func readConfig() -> [UInt8] { [] }
  public func writeConfig(offset: Int, bytes: [UInt8], migration: Bool) throws {
    throw DeviceError("config space is read-only")
  }
  public func featuresAcknowledged(_ features: VirtioFeatures) {}
  public func reset() {}
  public func sendRARP(mac: [UInt8]) throws { throw DeviceError("SEND_RARP not supported by this device") }
  public func setMTU(_ mtu: UInt16) throws { throw DeviceError("NET_SET_MTU not supported by this device") }
  public func saveState() -> [UInt8] { [] }
  public func loadState(_ bytes: [UInt8]) throws {
    guard bytes.isEmpty else { throw DeviceError("this device has no state to load") }
  }
  public var capabilityFeatures: [String] { [] }
}
