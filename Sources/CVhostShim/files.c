// Descriptor identity and flags for descriptors a peer hands us.
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/kcmp.h>
#include <sys/syscall.h>
#include <unistd.h>

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
