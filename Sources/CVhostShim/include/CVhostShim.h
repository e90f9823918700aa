// A tiny C shim for what Swift cannot import directly: CMSG_* macros, epoll, eventfd, memfd.
#ifndef C_VHOST_SHIM_H
#define C_VHOST_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Sends `len` bytes from `buf` with `nfds` descriptors from `fds` as SCM_RIGHTS in one sendmsg(2)
/// (MSG_NOSIGNAL, MSG_DONTWAIT: never blocks; EAGAIN when the buffer is full).
/// Returns bytes sent or -1 with errno set. Uses MSG_NOSIGNAL.
ssize_t _cvh_sendmsg_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);

/// Receives up to `len` bytes into `buf` with recvmsg(2) and MSG_CMSG_CLOEXEC, collecting up to
/// `maxfds` SCM_RIGHTS descriptors into `fds`. `*nfds` gets the count; `*ctrunc` is set to 1 when
/// the kernel reported MSG_CTRUNC (descriptors were lost). Returns bytes read or -1 with errno.
/// Descriptors beyond `maxfds` that arrived in the control buffer are closed here.
ssize_t _cvh_recvmsg_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *ctrunc);

/// eventfd(2) with EFD_CLOEXEC | flags.
int _cvh_eventfd(unsigned int initval, int flags);
int _cvh_efd_nonblock(void);

/// memfd_create(2) with MFD_CLOEXEC (and MFD_ALLOW_SEALING when `sealing` is non-zero).
int _cvh_memfd_create(const char *name, int sealing);

/// epoll wrappers.
int _cvh_epoll_create(void);
int _cvh_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
/// Waits for events; fills `fds_out`/`events_out` (parallel arrays) with up to `max` entries.
int _cvh_epoll_wait(int epfd, uint64_t *data_out, uint32_t *events_out, int max, int timeout_ms);
int _cvh_epoll_ctl_add(void);
int _cvh_epoll_ctl_mod(void);
int _cvh_epoll_ctl_del(void);
uint32_t _cvh_epollin(void);
uint32_t _cvh_epollout(void);
uint32_t _cvh_epollerr(void);
uint32_t _cvh_epollhup(void);

/// poll(2) on one descriptor for readability; returns 1 ready, 0 timeout, -1 error.
int _cvh_poll_readable(int fd, int timeout_ms);

/// The maximum number of descriptors one vhost-user message may carry in our receive path.
int _cvh_max_fds(void);

/// fcntl(F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW): 0 on success, -1 with errno (EPERM when the
/// file does not allow sealing, EINVAL when it is not a memfd).
int _cvh_seal_size(int fd);
/// 1 if `fd` is a regular file (memfd, tmpfs, hugetlbfs), and its size in `*size`.
int _cvh_regular_size(int fd, long long *size);

/// posix_spawn of `path` with `argv` (NULL-terminated) in a new process group, with an empty
/// signal mask and default SIGTERM/SIGINT/SIGPIPE handling, stdin from /dev/null and stdout+stderr
/// to `logfd`. Returns the pid or -1 with errno.
int _cvh_spawn(const char *path, char *const argv[], int logfd);

/// O_DIRECT.
int _cvh_o_direct(void);
/// fallocate(2) keeping the size: punch a hole (punch != 0) or zero the range.
int _cvh_fallocate(int fd, int punch, long long offset, long long len);

/// getrandom(2).
ssize_t _cvh_getrandom(void *buf, size_t len);

/// accept4(2) with SOCK_CLOEXEC.
int _cvh_accept_cloexec(int fd);

/// Names the calling thread (pthread_setname_np(3); at most 15 bytes are kept).
int _cvh_set_thread_name(const char *name);

/// TUNSETOFFLOAD(flags) on a TAP descriptor: 0, or -1 with errno.
int _cvh_tun_set_offload(int fd, unsigned int flags);
/// TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN.
unsigned int _cvh_tun_tcp_offloads(void);

/// A spin-wait hint (x86 PAUSE, arm64 YIELD): a busy-polling loop that found nothing eases off the
/// cache lines the other side is writing, and its sibling hyperthread gets the core meanwhile.
static inline void _cvh_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/// Prefetches the cache line at `p` for reading (write == 0) or writing (__builtin_prefetch).
static inline void _cvh_prefetch(const void *p, int write) {
  if (write) {
    __builtin_prefetch(p, 1, 3);
  } else {
    __builtin_prefetch(p, 0, 3);
  }
}

/// Whether descriptors `a` and `b` of this process refer to the same open file description
/// (kcmp(2) KCMP_FILE): 1 yes, 0 no, -1 with errno when the kernel cannot tell.
int _cvh_same_file(int a, int b);

/// Installs a SIGUSR1 handler that only writes 8 bytes to `fd` (an eventfd; async-signal-safe),
/// so a thread can poll `fd` for "print the counters" without blocking or waiting for SIGUSR1 —
/// the Swift runtime's crash handler needs that signal delivered normally. 0 or -1 with errno.
int _cvh_install_status_signal(int fd);

/// Sets O_NONBLOCK on `fd` (fcntl F_GETFL/F_SETFL); 0 or -1 with errno.
int _cvh_set_nonblocking(int fd);

#ifdef __cplusplus
}
#endif
#endif
