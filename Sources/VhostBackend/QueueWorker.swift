import Synchronization
import VhostSystem

/// A dedicated thread serving a group of queues: it waits in epoll on their kick eventfds (or
/// busy-polls the rings with `--poll`) and calls the device for each active ring. An eventfd wakes
/// it when the control thread changes a ring (start, stop, enable) or at shutdown.
final class QueueWorker: @unchecked Sendable {
  /// Spin-wait hints after a polling turn that found no work (about 1–5 µs on current x86): the
  /// other side's index and ring lines are read less often while it writes them. Measured with
  /// `scripts/bench-net.sh` (P1/P2 +15–30 %; BENCHMARKS.md).
  static let idleRelax = 32
  let queues: [QueueHandle]
  let device: VhostUserDevice
  let poll: Bool
  let wakeup: EventFD
  private let stopping = Atomic<Bool>(false)
  private let rearm = Atomic<Bool>(true)
  /// Whether the thread was started (the Thread object itself is not kept: it retains its
  /// closure, which retains us — a cycle that leaked every worker and its descriptors).
  private var threadStarted = false
  private let finished = Condition()
  private var done = false

  init(queues: [QueueHandle], device: VhostUserDevice, poll: Bool) throws(SystemError) {
    self.queues = queues
    self.device = device
    self.poll = poll
    wakeup = try EventFD()
  }

  func start() throws(SystemError) {
    threadStarted = true
    do {
      try SystemThread.start(name: "vhost-queue-\(queues.first?.index ?? 0)") { [self] in
        self.run()
        self.finished.withLock {
          self.done = true
          self.finished.broadcast()
        }
      }
    } catch {
      threadStarted = false
      throw error
    }
  }

  /// Re-reads the queues' kick fds and states, and services every ring once.
  func wake() {
    rearm.store(true, ordering: .releasing)
    try? wakeup.signal()
  }

  /// Asynchronous completions are waiting: service the queues without re-arming.
  func completionsReady() { try? wakeup.signal() }

  func stop() {
    stopping.store(true, ordering: .releasing)
    try? wakeup.signal()
    finished.withLock {
      while !done && threadStarted { _ = finished.wait(until: .after(milliseconds: 1000)) }
    }
  }

  private func run() {
    guard let epoll = try? Epoll() else { return }
    let wakeToken = UInt64.max
    try? epoll.add(wakeup.fd, token: wakeToken)
    var armed: [Int: EventFD] = [:]
    var anyPolled = false
    var anyActive = false
    var idleTurns = 0
    while !stopping.load(ordering: .acquiring) {
      if rearm.exchange(false, ordering: .acquiringAndReleasing) {
        for (_, kick) in armed { epoll.remove(kick.fd) }
        armed = [:]
        anyPolled = false
        anyActive = false
        for q in queues {
          q.lock.withLock {
            if q.isActive { anyActive = true }
            if q.kickPolled && q.isActive { anyPolled = true }
            if let kick = q.kick, q.isActive, !poll {
              armed[q.index] = kick
              try? epoll.add(kick.fd, token: UInt64(q.index))
            }
          }
        }
        // Chains published before we were listening are served now (no injected kick needed).
        for q in queues { q.service(device) }
      }
      if poll && !anyActive {
        // Nothing to poll (rings not started yet, or unused ones such as a control queue or the
        // pairs a multiqueue driver did not enable): sleep until the control thread changes a ring.
        for t in epoll.wait(timeoutMilliseconds: 1000) where t == wakeToken { wakeup.drain() }
        rearm.store(true, ordering: .releasing)  // look at the rings again
        continue
      }
      if poll {
        var worked = false
        for q in queues where q.serviceIfWork(device) { worked = true }
        // Wake-ups (rearm, stop) are seen through their flags; the eventfd is only emptied now and
        // then, not with a read(2) on every idle turn of the loop.
        if !worked {
          SystemThread.relax(Self.idleRelax)
          idleTurns &+= 1
          if idleTurns & 4095 == 0 { wakeup.drain() }
        }
        continue
      }
      let busy = queues.contains { $0.wantsMoreService }
      let tokens = epoll.wait(timeoutMilliseconds: busy ? 0 : (anyPolled ? 1 : 1000))
      for q in queues where q.wantsMoreService { q.service(device) }
      for t in tokens {
        if t == wakeToken {
          wakeup.drain()
          for q in queues where q.hasPendingCompletions { q.service(device) }
          continue
        }
        guard let kick = armed[Int(t)], let q = queues.first(where: { $0.index == Int(t) }) else { continue }
        if q.kickArrived(kick) {
          q.service(device)
        } else {
          // Dead descriptor: no longer watched (the ring was stopped; a rearm follows).
          epoll.remove(kick.fd)
          armed[Int(t)] = nil
        }
      }
      if anyPolled {
        for q in queues where q.kickPolled { _ = q.serviceIfWork(device) }
      }
    }
  }
}

extension BackendSession {
  func startWorkers() {
    let per = max(1, configuration.queuesPerThread)
    var groups: [[QueueHandle]] = []
    for (i, q) in queues.enumerated() {
      if i % per == 0 { groups.append([]) }
      groups[groups.count - 1].append(q)
    }
    for g in groups {
      do {
        let w = try QueueWorker(queues: g, device: device, poll: configuration.poll)
        for q in g { q.worker = w }
        do {
          try w.start()
        } catch {
          for q in g { q.worker = nil }
          throw error
        }
        workers.append(w)
      } catch {
        log.error("no worker for queues \(g.map(\.index)): \(error)")
      }
    }
  }

  func rearmWorkers() { for w in workers { w.wake() } }

  func stopWorkers() {
    for w in workers { w.stop() }
    workers = []
  }
}
