// swift-tools-version: 6.1
// A package outside swift-vhost-user that builds a device of its own on the public API only, the
// way another project would (a path dependency here; a URL and version elsewhere).
import PackageDescription

let vhost = "swift-vhost-user"

let package = Package(
  name: "vhost-user-examples",
  platforms: [.macOS(.v15)],
  dependencies: [.package(name: vhost, path: "..")],
  targets: [
    .target(
      name: "UppercaseDevice",
      dependencies: [
        .product(name: "VhostBackend", package: vhost), .product(name: "Virtqueue", package: vhost),
        .product(name: "VhostProtocol", package: vhost),
      ],
      swiftSettings: [.swiftLanguageMode(.v6)]),
    .executableTarget(
      name: "uppercase-backend",
      dependencies: [
        "UppercaseDevice", .product(name: "VhostBackend", package: vhost),
        .product(name: "VhostSystem", package: vhost),
      ],
      swiftSettings: [.swiftLanguageMode(.v6)]),
    .testTarget(
      name: "UppercaseDeviceTests",
      dependencies: [
        "UppercaseDevice", .product(name: "VhostBackend", package: vhost),
        .product(name: "VhostFrontend", package: vhost), .product(name: "VhostProtocol", package: vhost),
        .product(name: "VhostSystem", package: vhost), .product(name: "Virtqueue", package: vhost),
      ],
      swiftSettings: [.swiftLanguageMode(.v6)]),
  ]
)
