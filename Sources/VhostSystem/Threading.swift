import CVhostShim

#if canImport(Glibc)
  import Glibc
#endif

/// A mutual-exclusion lock over `pthread_mutex_t` (what Foundation's `NSLock` is, without linking
/// Foundation: the back-end stays small and its idle footprint low).
public final class Lock: @unchecked Sendable {
  private let mutex: UnsafeMutablePointer<pthread_mutex_t>

  public init() {
    mutex = .allocate(capacity: 1)
    mutex.initialize(to: pthread_mutex_t())
    pthread_mutex_init(mutex, nil)
  }

  deinit {
    pthread_mutex_destroy(mutex)
    mutex.deallocate()
  }

  /// pthread_mutex_lock(3).
  public func lock() { pthread_mutex_lock(mutex) }
  /// pthread_mutex_unlock(3).
  public func unlock() { pthread_mutex_unlock(mutex) }

  /// Runs `body` holding the lock.
  public func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
    lock()
    defer { unlock() }
    return try body()
  }
}

/// A condition variable with its own mutex (`NSCondition` without Foundation). Timed waits use
/// CLOCK_MONOTONIC, so wall-clock changes do not stretch or cut them.
public final class Condition: @unchecked Sendable {
  private let mutex: UnsafeMutablePointer<pthread_mutex_t>
  private let cond: UnsafeMutablePointer<pthread_cond_t>

  public init() {
    mutex = .allocate(capacity: 1)
    mutex.initialize(to: pthread_mutex_t())
    pthread_mutex_init(mutex, nil)
    cond = .allocate(capacity: 1)
    cond.initialize(to: pthread_cond_t())
    var attr = pthread_condattr_t()
    pthread_condattr_init(&attr)
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
    pthread_cond_init(cond, &attr)
    pthread_condattr_destroy(&attr)
  }

  deinit {
    pthread_cond_destroy(cond)
    pthread_mutex_destroy(mutex)
    cond.deallocate()
    mutex.deallocate()
  }

  public func lock() { pthread_mutex_lock(mutex) }
  public func unlock() { pthread_mutex_unlock(mutex) }

  /// Runs `body` holding the mutex.
  public func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
    lock()
    defer { unlock() }
    return try body()
  }

  /// pthread_cond_wait(3); the caller holds the mutex.
  public func wait() { pthread_cond_wait(cond, mutex) }

  /// pthread_cond_timedwait(3) until `deadline`; false if it passed. The caller holds the mutex.
  @discardableResult
  public func wait(until deadline: Deadline) -> Bool {
    guard let ns = deadline.nanoseconds else {
      wait()
      return true
    }
    var ts = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
    return pthread_cond_timedwait(cond, mutex, &ts) == 0
  }

  /// pthread_cond_signal(3).
  public func signal() { pthread_cond_signal(cond) }
  /// pthread_cond_broadcast(3).
  public func broadcast() { pthread_cond_broadcast(cond) }
}

/// Detached threads over pthread_create(3) (Foundation's `Thread` without Foundation).
public enum SystemThread {
  /// Tells the CPU the caller is spinning (PAUSE / YIELD), `count` times: what a busy-polling loop
  /// does when a turn found no work.
  @inlinable
  public static func relax(_ count: Int = 1) {
    for _ in 0..<count { _cvh_cpu_relax() }
  }

  private final class Box {
    let name: String
    let body: @Sendable () -> Void
    init(_ name: String, _ body: @escaping @Sendable () -> Void) {
      self.name = name
      self.body = body
    }
  }

  /// Starts a detached thread named `name` (the first 15 bytes, pthread_setname_np(3)) running
  /// `body`. Fails only when the system cannot create a thread (EAGAIN: out of threads or memory).
  public static func start(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemError) {
    let box = Unmanaged.passRetained(Box(name, body)).toOpaque()
    var thread = pthread_t()
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
    defer { pthread_attr_destroy(&attr) }
    let rc = pthread_create(
      &thread, &attr,
      { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        _ = _cvh_set_thread_name(box.name)
        box.body()
        return nil
      }, box)
    guard rc == 0 else {
      Unmanaged<Box>.fromOpaque(box).release()
      throw SystemError("pthread_create", errno: rc)
    }
  }
}

extension Deadline {
  /// Whether the deadline has passed (never for `.never`).
  public var hasPassed: Bool {
    guard let nanoseconds else { return false }
    return Deadline.now() >= nanoseconds
  }
}

/// A value guarded by a `Lock` (Synchronization's `Mutex` without its ThreadSanitizer false
/// positive: TSan understands pthread mutexes).
public final class Locked<Value>: @unchecked Sendable {
  private let lock = Lock()
  private var value: Value

  public init(_ value: Value) { self.value = value }

  /// Runs `body` with exclusive access to the value.
  public func withLock<T, E: Error>(_ body: (inout Value) throws(E) -> T) throws(E) -> T {
    lock.lock()
    defer { lock.unlock() }
    return try body(&value)
  }
}

/// A per-thread object slot over pthread_key_create(3) (Foundation's `threadDictionary` without
/// Foundation). A thread's value is released when the thread ends.
public final class ThreadLocal<Value: AnyObject>: @unchecked Sendable {
  private var key = pthread_key_t()

  public init() {
    pthread_key_create(&key) { raw in
      if let raw { Unmanaged<AnyObject>.fromOpaque(raw).release() }
    }
  }

  /// The calling thread's value.
  public var value: Value? {
    get {
      guard let raw = pthread_getspecific(key) else { return nil }
      return Unmanaged<AnyObject>.fromOpaque(raw).takeUnretainedValue() as? Value
    }
    set {
      if let old = pthread_getspecific(key) { Unmanaged<AnyObject>.fromOpaque(old).release() }
      let new = newValue.map { Unmanaged.passRetained($0 as AnyObject).toOpaque() }
      pthread_setspecific(key, new)
    }
  }
}
