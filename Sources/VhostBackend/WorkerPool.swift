import VhostSystem

/// A fixed set of threads running submitted jobs (devices doing blocking I/O off the queue worker).
public final class WorkerPool: @unchecked Sendable {
  private let condition = Condition()
  private var jobs: [@Sendable () -> Void] = []
  private var head = 0
  private var stopping = false
  private var running = 0
  /// Threads actually started (fewer than asked for if the system refused some).
  public private(set) var threadCount = 0

  public init(threads: Int, name: String = "vhost-io") {
    for i in 0..<threads {
      condition.withLock { running += 1 }
      do {
        try SystemThread.start(name: "\(name)-\(i)") { [self] in work() }
        threadCount += 1
      } catch {
        condition.withLock { running -= 1 }
      }
    }
  }

  /// Queues `job`; one of the threads runs it (or the caller, if no thread could be started).
  public func submit(_ job: @escaping @Sendable () -> Void) {
    guard threadCount > 0 else { return job() }
    condition.withLock {
      jobs.append(job)
      condition.signal()
    }
  }

  private func work() {
    while true {
      let job: (@Sendable () -> Void)? = condition.withLock {
        while head == jobs.count && !stopping { condition.wait() }
        if head == jobs.count { return nil }
        let j = jobs[head]
        head += 1
        if head > 1024 && head * 2 > jobs.count {
          jobs.removeFirst(head)
          head = 0
        }
        return j
      }
      guard let job else { break }
      job()
    }
    condition.withLock {
      running -= 1
      condition.broadcast()
    }
  }

  /// Runs the queued jobs, then ends the threads.
  public func shutdown() {
    condition.withLock {
      stopping = true
      condition.broadcast()
      while running > 0 { condition.wait() }
    }
  }

  deinit {
    condition.withLock {
      stopping = true
      condition.broadcast()
    }
  }
}
