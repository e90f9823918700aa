// Descriptor identity and flags for descriptors a peer hands us.
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/kcmp.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <signal.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

int _cvh_same_file(int a, int b) {
  pid_t self = getpid();
  long r = syscall(SYS_kcmp, self, self, KCMP_FILE, (unsigned long)a, (unsigned long)b);
  if (r < 0) return -1;
  return r == 0 ? 1 : 0;
}

int _cvh_set_nonblocking(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return -1;
  if (flags & O_NONBLOCK) return 0;
  return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

static volatile int status_fd = -1;

static void on_status_signal(int sig) {
  (void)sig;
  int saved = errno;
  uint64_t one = 1;
  if (status_fd >= 0) {
    ssize_t r = write(status_fd, &one, sizeof one);
    (void)r;
  }
  errno = saved;
}

int _cvh_install_status_signal(int fd) {
  status_fd = fd;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_status_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  return sigaction(SIGUSR1, &sa, NULL);
}
