/* raw_udp_echo: the UDP echo the machine can do, the benchmark's "raw" row.
 *
 * Usage: raw_udp_echo PORT      (0 picks a free port; first line "port N")
 *
 * One IPv4 socket, one thread, level-triggered epoll, no library: each
 * wake-up reads up to BATCH datagrams with one recvmmsg into BATCH fixed
 * 64 KiB buffers (staggered, see STRIDE), and sends them all back, each to its sender, with one
 * sendmmsg that points at the same buffers and addresses (no copy). What
 * the kernel will not take yet (EAGAIN) waits where it is: reading stops
 * and EPOLLOUT is watched until the rest is out (backpressure, nothing
 * dropped). SIGTERM/SIGINT (via signalfd): exit 0.
 *
 * This is the floor for a UDP echo on this kernel, a syscall pair per batch
 * rather than per datagram: netev and libuv pay a callback and a sendmsg
 * per datagram by design (their APIs send one datagram per call).
 */
#define _GNU_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define DGRAM_MAX 65536
/* Buffers 64 KiB apart would all start in the same L2 cache sets, and a
 * batch of small datagrams would evict itself: each starts 17 cache lines
 * further along instead. */
#define STRIDE (DGRAM_MAX + 17 * 64)

static char *bufs;                     /* BATCH x STRIDE */
static struct iovec iov[BATCH];
static struct sockaddr_in6 peers[BATCH]; /* room for any address */
static struct mmsghdr msgs[BATCH];
static unsigned pending, pending_off;  /* replies [off, pending) not yet sent */
static int fd, ep;

static void watch(uint32_t events) {
  struct epoll_event ev = {.events = events, .data.fd = fd};
  if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) != 0) perror("raw_udp_echo: epoll_ctl");
}

/* Sends what is pending; returns 1 when all of it is out. */
static int flush(void) {
  while (pending_off < pending) {
    int n = sendmmsg(fd, msgs + pending_off, pending - pending_off, 0);
    if (n > 0) {
      pending_off += (unsigned)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return 0;
    } else {
      /* e.g. ECONNREFUSED left by an ICMP error: skip that one datagram */
      pending_off++;
    }
  }
  pending = pending_off = 0;
  return 1;
}

static void on_readable(void) {
  for (int round = 0; round < 16; round++) {
    for (unsigned i = 0; i < BATCH; i++) {
      iov[i].iov_base = bufs + (size_t)i * STRIDE;
      iov[i].iov_len = DGRAM_MAX;
      msgs[i].msg_hdr = (struct msghdr){
          .msg_name = &peers[i], .msg_namelen = sizeof peers[i], .msg_iov = &iov[i], .msg_iovlen = 1};
    }
    int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) perror("raw_udp_echo: recvmmsg");
      return;
    }
    /* The same headers go back out: each reply is its datagram's bytes
     * (msg_len of them) to the address it came from. */
    for (int i = 0; i < n; i++) iov[i].iov_len = msgs[i].msg_len;
    pending = (unsigned)n;
    pending_off = 0;
    if (!flush()) {
      watch(EPOLLOUT);
      return;
    }
    if (n < BATCH) return;
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s PORT\n", argv[0]);
    return 2;
  }
  int port = atoi(argv[1]);
  bufs = malloc((size_t)BATCH * STRIDE);
  if (!bufs) return perror("raw_udp_echo: malloc"), 1;
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigprocmask(SIG_BLOCK, &stop, NULL);
  int sfd = signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK);

  fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    perror("raw_udp_echo: bind");
    return 1;
  }
  socklen_t al = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &al);
  printf("port %u\n", (unsigned)ntohs(a.sin_port));
  fflush(stdout);

  ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
  epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  ev.data.fd = sfd;
  epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);

  struct epoll_event evs[4];
  for (;;) {
    int n = epoll_wait(ep, evs, 4, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("raw_udp_echo: epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; i++) {
      if (evs[i].data.fd == sfd) {
        close(fd);
        free(bufs);
        return 0;
      }
      if (pending) {
        if (flush()) {
          watch(EPOLLIN);
          on_readable();
        }
      } else {
        on_readable();
      }
    }
  }
}
