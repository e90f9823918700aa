// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
  name: "swift-vhost-user",
  platforms: [.macOS(.v15)],
  products: [
    .library(name: "VhostProtocol", targets: ["VhostProtocol"]),
    .library(name: "VhostSystem", targets: ["VhostSystem"]),
    .library(name: "VhostTransport", targets: ["VhostTransport"]),
    .library(name: "Virtqueue", targets: ["Virtqueue"]),
    .library(name: "VhostFrontend", targets: ["VhostFrontend"]),
    .library(name: "VhostBackend", targets: ["VhostBackend"]),
    .library(name: "VhostDevices", targets: ["VhostDevices"]),
    .library(name: "VhostConformance", targets: ["VhostConformance"]),
    .library(name: "VhostTools", targets: ["VhostTools"]),
    .executable(name: "vhost-user", targets: ["VhostUserCLI"]),
    .executable(name: "vhost-fuzz", targets: ["vhost-fuzz"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
  ],
  targets: [
    .target(name: "CVhostShim"),
    .target(name: "VhostProtocol", swiftSettings: strict),
    .target(name: "VhostSystem", dependencies: ["CVhostShim"], swiftSettings: strict),
    .target(name: "VhostTooling", dependencies: ["CVhostShim", "VhostSystem"], swiftSettings: strict),
    .target(name: "VhostTransport", dependencies: ["VhostSystem", "VhostProtocol"], swiftSettings: strict),
    .target(
      name: "VhostTools", dependencies: ["VhostProtocol", "VhostSystem", "VhostTransport"], swiftSettings: strict),
    .target(name: "Virtqueue", dependencies: ["VhostProtocol", "VhostSystem"], swiftSettings: strict),
    .target(
      name: "VhostFrontend",
      dependencies: [
        "VhostProtocol", "VhostSystem", "VhostTransport", "Virtqueue",
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: strict),
    .target(
      name: "VhostBackend",
      dependencies: [
        "VhostProtocol", "VhostSystem", "VhostTransport", "Virtqueue",
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: strict),
    .target(
      name: "VhostConformance",
      dependencies: ["VhostFrontend", "VhostProtocol", "VhostSystem", "VhostTransport", "Virtqueue"],
      swiftSettings: strict),
    .target(
      name: "VhostDevices", dependencies: ["VhostBackend", "VhostProtocol", "VhostSystem", "Virtqueue"],
      swiftSettings: strict),
    .target(
      name: "VhostFuzzTargets",
      dependencies: [
        "VhostBackend", "VhostDevices", "VhostFrontend", "VhostProtocol", "VhostSystem", "VhostTransport", "Virtqueue",
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: strict),
    .executableTarget(
      name: "vhost-fuzz", dependencies: ["VhostFuzzTargets"], path: "Sources/VhostFuzz", swiftSettings: strict),
    .executableTarget(
      name: "VhostUserCLI",
      dependencies: [
        "VhostBackend", "VhostDevices", "VhostFrontend", "VhostProtocol", "VhostSystem", "VhostTransport",
        "VhostTooling", "VhostConformance", "VhostTools",
        "Virtqueue", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
      ],
      swiftSettings: strict),
    .testTarget(name: "FuzzCorpusTests", dependencies: ["VhostFuzzTargets"], swiftSettings: strict),
    .testTarget(name: "VhostProtocolTests", dependencies: ["VhostProtocol"], swiftSettings: strict),
    .testTarget(
      name: "BackendTests",
      dependencies: ["VhostBackend", "VhostFrontend", "VhostProtocol", "VhostSystem", "VhostTransport", "Virtqueue"],
      swiftSettings: strict),
    .testTarget(
      name: "VhostFrontendTests",
      dependencies: ["VhostFrontend", "VhostProtocol", "VhostSystem", "VhostTransport", "Virtqueue"],
      swiftSettings: strict),
    .testTarget(
      name: "InteropTests",
      dependencies: [
        "VhostBackend", "VhostDevices", "VhostFrontend", "VhostProtocol", "VhostSystem", "VhostTooling",
        "VhostTransport", "Virtqueue", "VhostConformance", "VhostTools",
      ],
      swiftSettings: strict),
  ]
)
