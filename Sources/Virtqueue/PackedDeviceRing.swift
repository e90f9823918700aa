import VhostProtocol
import VhostSystem

/// Placeholder until the packed ring lands (being written now).
public final class PackedDeviceRing: DeviceRing, @unchecked Sendable {
  public let configuration: RingConfiguration
  public var log: DirtyLog?
  public init(_ c: RingConfiguration, memory: GuestMemory) throws(ChainError) {
    configuration = c
    throw .ringNotReady("packed rings are not supported yet")
  }
  public func pop() throws(ChainError) -> DescriptorChain? { nil }
  public func push(_ chain: DescriptorChain, length: UInt32) throws(ChainError) {}
  public func needsNotification() -> Bool { false }
  public func setKicksWanted(_ wanted: Bool) {}
  public var base: VringBase { configuration.base }
  public var hasAvailable: Bool { false }
}
