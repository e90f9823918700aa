#define _GNU_SOURCE
#include "CVhostShim.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define CVH_MAX_FDS 32

int _cvh_max_fds(void) { return CVH_MAX_FDS; }

ssize_t _cvh_sendmsg_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
  struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  union {
    char buf[CMSG_SPACE(sizeof(int) * CVH_MAX_FDS)];
    struct cmsghdr align;
  } control;
  if (nfds > 0) {
    if (nfds > CVH_MAX_FDS) {
      errno = EINVAL;
      return -1;
    }
    memset(&control, 0, sizeof(control));
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t)nfds);
  }
  return sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

ssize_t _cvh_recvmsg_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *ctrunc) {
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  union {
    char buf[CMSG_SPACE(sizeof(int) * CVH_MAX_FDS)];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof(control));
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof(control.buf);
  *nfds = 0;
  *ctrunc = 0;
  ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  if (n < 0) return n;
  if (msg.msg_flags & MSG_CTRUNC) *ctrunc = 1;
  for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int *data = (int *)CMSG_DATA(cmsg);
    for (size_t i = 0; i < count; i++) {
      int fd;
      memcpy(&fd, data + i, sizeof(int));
      if (*nfds < maxfds) {
        fds[(*nfds)++] = fd;
      } else {
        close(fd);
        *ctrunc = 1;
      }
    }
  }
  return n;
}

int _cvh_eventfd(unsigned int initval, int flags) { return eventfd(initval, EFD_CLOEXEC | flags); }
int _cvh_efd_nonblock(void) { return EFD_NONBLOCK; }

int _cvh_memfd_create(const char *name, int sealing) {
  return memfd_create(name, MFD_CLOEXEC | (sealing ? MFD_ALLOW_SEALING : 0));
}

int _cvh_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int _cvh_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
  struct epoll_event ev;
  memset(&ev, 0, sizeof(ev));
  ev.events = events;
  ev.data.u64 = data;
  return epoll_ctl(epfd, op, fd, &ev);
}

int _cvh_epoll_wait(int epfd, uint64_t *data_out, uint32_t *events_out, int max, int timeout_ms) {
  struct epoll_event evs[64];
  if (max > 64) max = 64;
  int n = epoll_wait(epfd, evs, max, timeout_ms);
  for (int i = 0; i < n; i++) {
    data_out[i] = evs[i].data.u64;
    events_out[i] = evs[i].events;
  }
  return n;
}

int _cvh_epoll_ctl_add(void) { return EPOLL_CTL_ADD; }
int _cvh_epoll_ctl_mod(void) { return EPOLL_CTL_MOD; }
int _cvh_epoll_ctl_del(void) { return EPOLL_CTL_DEL; }
uint32_t _cvh_epollin(void) { return EPOLLIN; }
uint32_t _cvh_epollout(void) { return EPOLLOUT; }
uint32_t _cvh_epollerr(void) { return EPOLLERR; }
uint32_t _cvh_epollhup(void) { return EPOLLHUP; }

int _cvh_poll_readable(int fd, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int r = poll(&p, 1, timeout_ms);
  if (r > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR))) return 1;
  return r;
}

int _cvh_accept_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }

#include <sys/random.h>
ssize_t _cvh_getrandom(void *buf, size_t len) { return getrandom(buf, len, 0); }

#include <fcntl.h>
#include <linux/falloc.h>
int _cvh_o_direct(void) { return O_DIRECT; }
int _cvh_fallocate(int fd, int punch, long long offset, long long len) {
  int mode = FALLOC_FL_KEEP_SIZE | (punch ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE);
  return fallocate(fd, mode, offset, len);
}

#include <signal.h>
#include <spawn.h>
extern char **environ;
int _cvh_spawn(const char *path, char *const argv[], int logfd) {
  posix_spawnattr_t attr;
  posix_spawn_file_actions_t actions;
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_init(&actions);
  sigset_t empty, defaults;
  sigemptyset(&empty);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, logfd, 1);
  posix_spawn_file_actions_adddup2(&actions, logfd, 2);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, path, &actions, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    errno = rc;
    return -1;
  }
  return pid;
}

#include <sys/stat.h>
int _cvh_seal_size(int fd) { return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW); }
int _cvh_regular_size(int fd, long long *size) {
  struct stat st;
  if (fstat(fd, &st) != 0) return -1;
  *size = (long long)st.st_size;
  return S_ISREG(st.st_mode) ? 1 : 0;
}

int _cvh_set_thread_name(const char *name) {
  char buf[16];
  strncpy(buf, name, sizeof buf - 1);
  buf[sizeof buf - 1] = 0;
  return pthread_setname_np(pthread_self(), buf);
}

#include <linux/if_tun.h>
#include <sys/ioctl.h>
int _cvh_tun_set_offload(int fd, unsigned int flags) { return ioctl(fd, TUNSETOFFLOAD, (unsigned long)flags); }
unsigned int _cvh_tun_tcp_offloads(void) { return TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN; }
