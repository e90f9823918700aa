import VhostProtocol
import VhostSystem

/// What a back-end offers, as `vhost-user probe` reports it.
public struct ProbeReport: Sendable {
  public var features: VirtioFeatures
  public var protocolFeatures: ProtocolFeatures?
  public var queueCount: UInt64?
  public var maxMemSlots: UInt64?
  public var config: [UInt8]?
  public var configError: String?
  public var status: UInt8?
  public var device: VirtioDeviceType?
  public var migrationBlocker: String?

  /// Connects (as a front-end) and asks the back-end what it offers. Only messages whose features
  /// the back-end offers are sent; the connection is closed afterwards.
  public static func collect(path: String, device: VirtioDeviceType? = nil, timeoutMilliseconds: Int = 5000)
    throws(FrontendError) -> ProbeReport
  {
    var configuration = FrontendConfiguration()
    configuration.timeoutMilliseconds = timeoutMilliseconds
    configuration.serveBackendChannel = false
    let connection = try VhostUserConnection.connect(path: path, configuration: configuration, retryMilliseconds: 0)
    defer { connection.close() }
    let frontend = connection.device()
    let state = try frontend.negotiate()
    var report = ProbeReport(
      features: state.backendFeatures,
      protocolFeatures: state.protocolFeaturesEnabled ? state.backendProtocolFeatures : nil,
      queueCount: state.maxQueues, maxMemSlots: state.maxMemSlots, device: device,
      migrationBlocker: state.migrationBlocker)
    if state.protocolFeatures.contains(.config) {
      let size = device == .net ? NetConfig.size : BlkConfig.size
      do {
        report.config = try frontend.getConfig(size: size)
      } catch {
        report.configError = error.description
      }
    }
    if state.protocolFeatures.contains(.status) { report.status = try? frontend.getStatus() }
    return report
  }

  /// The device type: as given, else inferred from the feature bits
  /// (`VirtioDeviceType.init(inferringFrom:)`).
  public var inferredDevice: VirtioDeviceType? { device ?? VirtioDeviceType(inferringFrom: features) }

  /// Human-readable lines.
  public var text: String {
    var lines: [String] = []
    let dev = inferredDevice
    lines.append("device type:        \(dev?.rawValue ?? "unknown")")
    lines.append("virtio features:    0x\(String(features.rawValue, radix: 16))")
    for name in features.names(for: dev) { lines.append("  \(name)") }
    if let p = protocolFeatures {
      lines.append("protocol features:  0x\(String(p.rawValue, radix: 16))")
      for name in p.names { lines.append("  \(name)") }
    } else {
      lines.append("protocol features:  (not offered: no VHOST_USER_F_PROTOCOL_FEATURES)")
    }
    lines.append("queues:             \(queueCount.map(String.init) ?? "(no MQ)")")
    lines.append("max memory slots:   \(maxMemSlots.map(String.init) ?? "(no CONFIGURE_MEM_SLOTS)")")
    if let status { lines.append("status:             0x\(String(status, radix: 16))") }
    if let blocker = migrationBlocker { lines.append("note:               \(blocker)") }
    if let config {
      lines.append("config space:       \(config.count) bytes")
      switch dev {
      case .blk:
        if let c = try? BlkConfig(bytes: config) {
          lines.append("  capacity:         \(c.capacity) sectors (\(c.capacity * 512) bytes)")
          lines.append("  size_max:         \(c.sizeMax)")
          lines.append("  seg_max:          \(c.segMax)")
          lines.append("  blk_size:         \(c.blkSize)")
          lines.append("  num_queues:       \(c.numQueues)")
        }
      case .net:
        if let c = try? NetConfig(bytes: config) {
          lines.append("  mac:              \(c.macString)")
          lines.append("  status:           \(c.status)")
          lines.append("  max_vq_pairs:     \(c.maxVirtqueuePairs)")
          lines.append("  mtu:              \(c.mtu)")
        }
      default:
        lines.append("  " + config.map { String($0, radix: 16) }.joined(separator: " "))
      }
    } else if let configError {
      lines.append("config space:       error: \(configError)")
    }
    return lines.joined(separator: "\n")
  }

  /// One JSON object.
  public var json: String {
    func str(_ s: String) -> String { jsonString(s) }
    func list(_ a: [String]) -> String { "[" + a.map(str).joined(separator: ",") + "]" }
    let dev = inferredDevice
    var fields: [String] = []
    fields.append("\"device\":" + (dev.map { str($0.rawValue) } ?? "null"))
    fields.append("\"features\":\(features.rawValue)")
    fields.append("\"feature_names\":" + list(features.names(for: dev)))
    if let p = protocolFeatures {
      fields.append("\"protocol_features\":\(p.rawValue)")
      fields.append("\"protocol_feature_names\":" + list(p.names))
    } else {
      fields.append("\"protocol_features\":null")
    }
    fields.append("\"queues\":" + (queueCount.map(String.init) ?? "null"))
    fields.append("\"max_mem_slots\":" + (maxMemSlots.map(String.init) ?? "null"))
    fields.append("\"status\":" + (status.map { String($0) } ?? "null"))
    if let config {
      fields.append("\"config\":[" + config.map(String.init).joined(separator: ",") + "]")
      if dev == .blk, let c = try? BlkConfig(bytes: config) {
        fields.append(
          "\"blk\":{\"capacity\":\(c.capacity),\"size_max\":\(c.sizeMax),\"seg_max\":\(c.segMax),"
            + "\"blk_size\":\(c.blkSize),\"num_queues\":\(c.numQueues)}")
      }
      if dev == .net, let c = try? NetConfig(bytes: config) {
        fields.append(
          "\"net\":{\"mac\":\(str(c.macString)),\"status\":\(c.status),\"max_virtqueue_pairs\":\(c.maxVirtqueuePairs),"
            + "\"mtu\":\(c.mtu)}")
      }
    }
    if let blocker = migrationBlocker { fields.append("\"migration_blocker\":" + str(blocker)) }
    return "{" + fields.joined(separator: ",") + "}"
  }
}
