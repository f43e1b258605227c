/* epoll_echo: raw single-threaded epoll echo server, the machine's reference.
 *
 * Usage: epoll_echo PORT      (0 picks a free port; first line "port N")
 *
 * Level-triggered epoll, nonblocking sockets, TCP_NODELAY. One shared 64 KiB
 * read buffer: an idle connection holds nothing but its small struct. Bytes
 * the kernel would not take are copied aside and the connection stops being
 * read until they are out (backpressure). SIGTERM/SIGINT (via signalfd):
 * close everything and exit 0.
 */
#define _GNU_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct conn {
  int fd;
  char *pending; /* unsent echo, only while the kernel is full */
  size_t pending_len, pending_off;
  struct conn *prev, *next;
} conn;

static int ep;
static char buf[65536];
static conn *all;
static int listen_tag, signal_tag; /* addresses used as epoll tags */

static void drop(conn *c) {
  close(c->fd);
  free(c->pending);
  if (c->prev) c->prev->next = c->next;
  else all = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c);
}

static void set_events(conn *c, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.ptr = c};
  epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Writes buf[0..n); keeps what the kernel refused. 0 ok, -1 error. */
static int echo(conn *c, const char *data, size_t n) {
  size_t off = 0;
  while (off < n) {
    ssize_t w = write(c->fd, data + off, n - off);
    if (w > 0) {
      off += (size_t)w;
    } else if (w < 0 && errno == EINTR) {
      continue;
    } else if (w < 0 && errno == EAGAIN) {
      c->pending = malloc(n - off);
      if (!c->pending) return -1;
      memcpy(c->pending, data + off, n - off);
      c->pending_len = n - off;
      c->pending_off = 0;
      set_events(c, EPOLLOUT);
      return 0;
    } else {
      return -1;
    }
  }
  return 0;
}

static void on_readable(conn *c) {
  for (int i = 0; i < 16 && !c->pending; i++) {
    ssize_t n = read(c->fd, buf, sizeof buf);
    if (n > 0) {
      if (echo(c, buf, (size_t)n) != 0) return drop(c);
      if ((size_t)n < sizeof buf) return;
    } else if (n == 0) {
      return drop(c);
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN) {
      return;
    } else {
      return drop(c);
    }
  }
}

static void on_writable(conn *c) {
  while (c->pending_off < c->pending_len) {
    ssize_t w = write(c->fd, c->pending + c->pending_off, c->pending_len - c->pending_off);
    if (w > 0) c->pending_off += (size_t)w;
    else if (w < 0 && errno == EINTR) continue;
    else if (w < 0 && errno == EAGAIN) return;
    else return drop(c);
  }
  free(c->pending);
  c->pending = NULL;
  set_events(c, EPOLLIN);
}

static void on_accept(int lfd) {
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN) perror("epoll_echo: accept");
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conn *c = calloc(1, sizeof *c);
    if (!c) {
      close(fd);
      continue;
    }
    c->fd = fd;
    c->next = all;
    if (all) all->prev = c;
    all = c;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s PORT\n", argv[0]);
    return 2;
  }
  int port = atoi(argv[1]);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigprocmask(SIG_BLOCK, &stop, NULL);
  int sfd = signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 1024) != 0) {
    perror("epoll_echo: bind/listen");
    return 1;
  }
  socklen_t al = sizeof a;
  getsockname(lfd, (struct sockaddr *)&a, &al);
  printf("port %u\n", (unsigned)ntohs(a.sin_port));
  fflush(stdout);

  ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listen_tag};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  ev.data.ptr = &signal_tag;
  epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);

  struct epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("epoll_echo: epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; i++) {
      void *tag = evs[i].data.ptr;
      if (tag == &listen_tag) {
        on_accept(lfd);
      } else if (tag == &signal_tag) {
        while (all) drop(all);
        close(lfd);
        return 0;
      } else {
        conn *c = tag;
        if (c->pending) on_writable(c);
        else on_readable(c);
      }
    }
  }
}
