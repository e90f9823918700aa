import Synchronization
import VhostProtocol
import VhostSystem
import Virtqueue

/// One virtqueue as the back-end tracks it: what the front-end configured (size, addresses, base,
/// kick/call/err descriptors), its two independent states (started/stopped, enabled/disabled), the
/// live ring while started, and the counters. The control thread configures it; the worker thread
/// processes it; `lock` keeps them apart.
public final class QueueHandle: @unchecked Sendable {
  public let index: Int
  let lock = Lock()
  // Configuration (control thread, under lock).
  var size: UInt16 = 0
  var address: VringAddress?
  var baseNum: UInt32 = 0
  var kick: EventFD?
  var kickPolled = false
  var call: EventFD?
  var err: EventFD?
  var started = false
  var enabled = false
  var ring: DeviceRing?
  weak var session: BackendSession?
  /// Heads recorded as in flight by a previous back-end, to be processed again first.
  var resubmit: [UInt16] = []
  /// Chains (packed rings) recorded as in flight by a previous back-end.
  var resubmitChains: [DescriptorChain] = []
  /// The packed inflight tracker (kept across ring rebuilds: it remembers which ids are in flight).
  var packedTracker: InflightPackedQueue?
  var inflightAttached = false
  // Asynchronous completions: filled from any thread under `completionLock`, pushed to the used
  // ring by the worker (under `lock`). `generation` changes whenever the ring is reset or stopped,
  // so a completion for a ring that no longer exists is dropped instead of corrupting a new one.
  let completionLock = Condition()
  var pendingCompletions: [(chain: DescriptorChain, written: Int, generation: UInt64)] = []
  /// `pendingCompletions.count`, readable without the lock (a busy ring checks it on every service).
  let pendingCount = Atomic<Int>(0)
  var generation: UInt64 = 0
  /// Requests handed to `asyncCompletion` and not yet completed (under `lock`).
  public internal(set) var outstanding = 0
  weak var worker: QueueWorker?
  /// Chains `next()` still hands out in this service call.
  var budget = 0
  /// The last service call stopped because of the budget (there may be more work).
  var budgetExhausted = false
  // Counters: written by the worker, read from any thread.
  private let completedCount = Atomic<Int>(0)
  private let errorCount = Atomic<Int>(0)
  private let lastErrorLock = Lock()
  private var _lastChainError: ChainError?
  /// Chains completed on the used ring.
  public var chainsCompleted: Int { completedCount.load(ordering: .relaxed) }
  /// Malformed chains (dropped or returned with length 0).
  public var chainErrors: Int { errorCount.load(ordering: .acquiring) }
  /// The most recent chain error (set before `chainErrors` counts it).
  public var lastChainError: ChainError? { lastErrorLock.withLock { _lastChainError } }

  private func countError(_ error: ChainError) {
    lastErrorLock.withLock { _lastChainError = error }
    errorCount.add(1, ordering: .releasing)
  }

  init(index: Int) { self.index = index }

  /// A queue that is started and enabled over `ring`, outside any session (fuzzers and device
  /// tests drive a device's `process` with it directly).
  @_spi(Fuzzing) public static func standalone(index: Int = 0, ring: DeviceRing) -> QueueHandle {
    let q = QueueHandle(index: index)
    q.ring = ring
    q.size = ring.configuration.size
    q.started = true
    q.enabled = true
    q.budget = 4 * Int(ring.configuration.size)
    return q
  }

  /// Dirty log to pass to `DescriptorChain.writer(log:)` (nil when logging is off).
  public private(set) var log: DirtyLog?

  /// Whether the ring is started and enabled (only then does the worker call the device).
  var isActive: Bool { started && enabled && ring != nil }

  func setLog(_ log: DirtyLog?) {
    self.log = log
    ring?.log = log
  }

  /// The next available chain, or nil. Malformed chains are returned to the driver (used, length
  /// 0), counted, and VRING_ERR is signalled; processing continues with the next one.
  public func next() -> DescriptorChain? {
    guard let ring else { return nil }
    while let head = resubmit.first, let split = ring as? SplitDeviceRing {
      resubmit.removeFirst()
      if let chain = try? split.resubmit(head: head) { return chain }
    }
    if !resubmitChains.isEmpty { return resubmitChains.removeFirst() }
    // A bounded batch per service call (malformed chains count too): a guest that keeps the ring
    // full, or lays its used ring over its avail ring, cannot pin the worker; it comes back later.
    while true {
      guard budget > 0 else {
        budgetExhausted = true
        return nil
      }
      budget -= 1
      do {
        return try ring.pop()
      } catch {
        countError(error)
        signalError()
        if case .availIndexJump = error { return nil }
        if case .ringNotReady = error { return nil }
      }
    }
  }

  /// Takes up to `limit` available chains into `burst` (reusing its storage) and returns how many;
  /// 0 when there are none (or this service call's budget is spent). Malformed chains are counted
  /// and VRING_ERR is signalled as with `next()`; those that can be returned stay in the burst as
  /// failed entries (`isFailed`), which `completeBurst` returns with length 0. Every chain taken
  /// must be completed with `completeBurst` before the next burst is taken.
  public func nextBurst(_ burst: inout ChainBurst, limit: Int = 64) -> Int {
    burst.removeAll()
    guard let ring else { return 0 }
    if !resubmit.isEmpty || !resubmitChains.isEmpty {
      // Requests a previous back-end left in flight go first, one by one.
      while burst.count < limit, let chain = next() { burst.append(chain) }
      return burst.count
    }
    // A burst made only of heads that could not be returned is not the end of the ring: go on
    // (within the budget), as `next()` does.
    while true {
      let n = min(limit, budget)
      guard n > 0 else {
        budgetExhausted = true
        return 0
      }
      do {
        try ring.popBurst(into: &burst, limit: n)
      } catch {
        countError(error)
        signalError()
        burst.removeAll()
        return 0
      }
      for error in burst.errors {
        countError(error)
        signalError()
      }
      budget -= burst.taken
      if burst.count > 0 || burst.errors.isEmpty { return burst.count }
    }
  }

  /// Burst storage reused from service call to service call (worker thread, under `lock`).
  private var burstStorage = ChainBurst()

  /// Lets go of the burst storage and the mappings it refers to (a new memory table, a stopped
  /// ring; caller holds `lock`).
  func dropBurstStorage() { burstStorage = ChainBurst() }

  /// Runs `body` with this queue's reusable burst storage (from `process`, on the worker).
  public func withBurstStorage<R>(_ body: (inout ChainBurst) -> R) -> R {
    var b = ChainBurst()
    swap(&b, &burstStorage)
    defer { swap(&b, &burstStorage) }
    return body(&b)
  }

  /// Completes every chain of `burst` (with the lengths set by `setWritten`, 0 otherwise) and
  /// empties it.
  public func completeBurst(_ burst: inout ChainBurst) {
    guard let ring, burst.count > 0 else { return }
    do {
      try ring.pushBurst(burst)
      var completed = 0
      for i in 0..<burst.count where !burst.isFailed(i) { completed += 1 }
      completedCount.add(completed, ordering: .relaxed)
    } catch {
      countError(error)
    }
    burst.removeAll()
  }

  /// Completes `chain` with `written` bytes.
  public func complete(_ chain: DescriptorChain, written: Int) {
    guard let ring else { return }
    do {
      try ring.push(chain, length: UInt32(clamping: written))
      completedCount.add(1, ordering: .relaxed)
    } catch {
      countError(error)
    }
  }

  /// Takes `chain` for completion later, from any thread (devices doing I/O on a thread pool).
  /// Completions may arrive in any order; the worker publishes them in the order they arrive.
  public func asyncCompletion(for chain: DescriptorChain) -> AsyncCompletion {
    outstanding += 1
    return AsyncCompletion(queue: self, chain: chain, generation: generation)
  }

  func enqueueCompletion(_ chain: DescriptorChain, written: Int, generation: UInt64) {
    completionLock.withLock {
      pendingCompletions.append((chain, written, generation))
      pendingCount.add(1, ordering: .releasing)
      completionLock.broadcast()
    }
    worker?.completionsReady()
  }

  var hasPendingCompletions: Bool { pendingCount.load(ordering: .acquiring) > 0 }

  /// Publishes completions that arrived from other threads (caller holds `lock`).
  func flushCompletions() {
    guard pendingCount.load(ordering: .acquiring) > 0 else { return }
    let batch: [(chain: DescriptorChain, written: Int, generation: UInt64)] = completionLock.withLock {
      defer {
        pendingCount.subtract(pendingCompletions.count, ordering: .releasing)
        pendingCompletions.removeAll(keepingCapacity: true)
      }
      return pendingCompletions
    }
    guard !batch.isEmpty else { return }
    for c in batch where c.generation == generation {
      complete(c.chain, written: c.written)
      outstanding -= 1
    }
    notifyIfNeeded()
  }

  /// Stops fetching and waits (up to `milliseconds`) until every request taken for asynchronous
  /// completion has completed (GET_VRING_BASE). Returns false on timeout.
  func quiesce(milliseconds: Int) -> Bool {
    lock.withLock { started = false }
    let end = Deadline.after(milliseconds: milliseconds)
    while true {
      let idle: Bool = lock.withLock {
        flushCompletions()
        return outstanding == 0
      }
      if idle { return true }
      if end.hasPassed { return false }
      completionLock.withLock {
        if pendingCompletions.isEmpty { _ = completionLock.wait(until: .after(milliseconds: 50)) }
      }
    }
  }

  /// Interrupts the driver if it wants to be (EVENT_IDX / NO_INTERRUPT): call eventfd, or the
  /// in-band BACKEND_VRING_CALL when INBAND_NOTIFICATIONS is in use and no call fd was given.
  public func notifyIfNeeded() {
    guard let ring, ring.needsNotification() else { return }
    notify()
  }

  func notify() {
    if let call {
      do {
        try call.signal()
      } catch {
        // Not an eventfd, and not one that is merely full (EAGAIN): it will never work.
        self.call = nil
        stopBroken("call descriptor failed (\(error))")
      }
    } else {
      session?.sendInband(.vringCall, queue: index)
    }
  }

  func signalError() {
    if let err {
      do {
        try err.signal()
      } catch {
        self.err = nil
        session?.log.warning("ring \(index): error descriptor failed (\(error)); dropped")
      }
    } else {
      session?.sendInband(.vringErr, queue: index)
    }
  }

  /// Stops the ring because a notification descriptor the front-end gave is unusable (caller holds
  /// `lock`): it keeps its position for GET_VRING_BASE, VRING_ERR tells the front-end, and the
  /// worker no longer waits on it.
  func stopBroken(_ reason: String) {
    guard started else { return }
    session?.log.warning("ring \(index) stopped: \(reason)")
    if let ring { baseNum = ring.base.num(packed: ring.configuration.packed) }
    started = false
    ring = nil
    kick = nil
    kickPolled = false
    generation &+= 1
    dropBurstStorage()
    signalError()
    worker?.wake()
  }

  /// The kick descriptor was readable: drains it; at end of file or in error the ring stops
  /// (worker thread). Returns whether the ring should be serviced.
  func kickArrived(_ kick: EventFD) -> Bool {
    switch kick.drainResult() {
    case .signalled, .empty: return true
    case .failed:
      lock.withLock {
        if self.kick?.fd === kick.fd { stopBroken("kick descriptor at end of file or in error") }
      }
      return false
    }
  }

  /// Processes the ring once if it is active (worker thread).
  func service(_ device: VhostUserDevice) {
    lock.lock()
    defer { lock.unlock() }
    if ring != nil { flushCompletions() }
    guard isActive else { return }
    budget = 4 * max(Int(size), 1)
    budgetExhausted = false
    device.process(self)
  }

  /// Polling mode: processes the ring if it has work, under one acquisition of the lock; returns
  /// whether it did.
  func serviceIfWork(_ device: VhostUserDevice) -> Bool {
    lock.lock()
    defer { lock.unlock() }
    guard let ring else { return false }
    let completions = hasPendingCompletions
    if completions { flushCompletions() }
    guard isActive, completions || budgetExhausted || ring.hasAvailable else { return completions }
    budget = 4 * max(Int(size), 1)
    budgetExhausted = false
    device.process(self)
    return true
  }

  /// The last service call left work behind (budget exhausted).
  var wantsMoreService: Bool { lock.withLock { budgetExhausted && isActive } }

  /// Back to the initial state: stopped, disabled, nothing configured.
  func reset() {
    size = 0
    address = nil
    baseNum = 0
    kick = nil
    kickPolled = false
    call = nil
    err = nil
    started = false
    enabled = false
    ring = nil
    log = nil
    resubmit = []
    resubmitChains = []
    packedTracker = nil
    inflightAttached = false
    generation &+= 1
    outstanding = 0
    dropBurstStorage()
  }
}

/// A request a device completes later, from any thread.
public struct AsyncCompletion: Sendable {
  let queue: QueueHandle
  public let chain: DescriptorChain
  let generation: UInt64

  /// Completes the request with `written` bytes; the queue's worker publishes it and notifies.
  public func complete(written: Int) { queue.enqueueCompletion(chain, written: written, generation: generation) }
}
