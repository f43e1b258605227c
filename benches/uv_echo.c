/* uv_echo: the benchmark's echo server on libuv (Debian's libuv1-dev).
 *
 * Usage: uv_echo [--udp] PORT      (0 picks a free port; first line "port N")
 *
 * libuv at its best, not its tutorial: one shared 64 KiB read buffer (the
 * loop is single-threaded), uv_try_write first, and only bytes the kernel
 * would not take are copied into a uv_write request. Past 1 MiB queued the
 * connection stops reading until the queue drains (backpressure). An idle
 * connection holds only its uv_tcp_t. SIGTERM/SIGINT: close every handle,
 * let the loop end, exit 0.
 *
 * --udp: a UDP echo, also at its best: a uv_udp_t made with
 * UV_UDP_RECVMMSG, so libuv reads up to 20 datagrams per recvmmsg into one
 * shared buffer (20 chunks of 64 KiB), and each datagram goes back to its
 * sender with uv_udp_try_send (one sendmsg, no request, no copy); only when
 * the kernel would not take it (UV_EAGAIN) is it copied into a uv_udp_send
 * request. Past 1 MiB queued, further replies are dropped and counted (the
 * count goes to stderr at exit), as UDP allows; so is a reply the kernel
 * refuses outright.
 */
#define _GNU_SOURCE
#include <uv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define QUEUE_LIMIT (1u << 20)

static uv_loop_t *loop;
static uv_tcp_t server;
static uv_signal_t sigterm, sigint;
static char readbuf[65536];

typedef struct {
  uv_write_t req;
  uv_buf_t buf;
} write_req;

static void on_close(uv_handle_t *h) {
  if (h->data == (void *)1) free(h); /* client connections are malloc'd */
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  *buf = uv_buf_init(readbuf, sizeof readbuf);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void write_cb(uv_write_t *req, int status) {
  write_req *w = (write_req *)req;
  uv_stream_t *s = req->handle;
  free(w->buf.base);
  free(w);
  if (status < 0) {
    if (!uv_is_closing((uv_handle_t *)s)) uv_close((uv_handle_t *)s, on_close);
    return;
  }
  if (uv_stream_get_write_queue_size(s) < QUEUE_LIMIT / 2 && !uv_is_closing((uv_handle_t *)s) && !uv_is_readable(s))
    uv_read_start(s, alloc_cb, read_cb);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  if (nread < 0) {
    uv_close((uv_handle_t *)s, on_close);
    return;
  }
  if (nread == 0) return;
  size_t done = 0;
  if (uv_stream_get_write_queue_size(s) == 0) {
    uv_buf_t b = uv_buf_init(buf->base, (unsigned)nread);
    int w = uv_try_write(s, &b, 1);
    if (w > 0) done = (size_t)w;
    else if (w != UV_EAGAIN) {
      uv_close((uv_handle_t *)s, on_close);
      return;
    }
  }
  if (done == (size_t)nread) return;
  write_req *w = malloc(sizeof *w);
  size_t rest = (size_t)nread - done;
  w->buf = uv_buf_init(malloc(rest), (unsigned)rest);
  memcpy(w->buf.base, buf->base + done, rest);
  if (uv_write(&w->req, s, &w->buf, 1, write_cb) != 0) {
    free(w->buf.base);
    free(w);
    uv_close((uv_handle_t *)s, on_close);
    return;
  }
  if (uv_stream_get_write_queue_size(s) >= QUEUE_LIMIT) uv_read_stop(s);
}

static void on_connection(uv_stream_t *srv, int status) {
  if (status < 0) {
    fprintf(stderr, "uv_echo: listen: %s\n", uv_strerror(status));
    return;
  }
  uv_tcp_t *c = malloc(sizeof *c);
  uv_tcp_init(loop, c);
  c->data = (void *)1;
  if (uv_accept(srv, (uv_stream_t *)c) != 0) {
    uv_close((uv_handle_t *)c, on_close);
    return;
  }
  uv_tcp_nodelay(c, 1);
  uv_read_start((uv_stream_t *)c, alloc_cb, read_cb);
}

/* ---- --udp ---- */

#define UDP_CHUNK (64 * 1024) /* libuv's recvmmsg chunk (UV__UDP_DGRAM_MAXSIZE) */
#define UDP_CHUNKS 20         /* the most libuv 1.44 reads per recvmmsg */

static uv_udp_t udp;
static char *udp_buf;
static unsigned long long udp_dropped;

typedef struct {
  uv_udp_send_t req;
  uv_buf_t buf;
} udp_req;

static void udp_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  *buf = uv_buf_init(udp_buf, UDP_CHUNK * UDP_CHUNKS);
}

static void udp_send_cb(uv_udp_send_t *req, int status) {
  (void)status; /* a datagram the OS refused later: UDP, nothing to do */
  udp_req *r = (udp_req *)req;
  free(r->buf.base);
  free(r);
}

static void udp_recv_cb(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *addr,
                        unsigned flags) {
  /* nread 0 with no address: nothing more (or, with UV_UDP_MMSG_FREE, the
   * end of a recvmmsg batch: the buffer is static, nothing to free). */
  if (nread < 0 || addr == NULL || (flags & UV_UDP_PARTIAL)) return;
  uv_buf_t b = uv_buf_init(buf->base, (unsigned)nread);
  if (uv_udp_get_send_queue_count(h) == 0) {
    int w = uv_udp_try_send(h, &b, 1, addr);
    if (w >= 0) return;
    if (w != UV_EAGAIN) { /* e.g. ECONNREFUSED from an earlier ICMP: drop */
      udp_dropped++;
      return;
    }
  }
  if (uv_udp_get_send_queue_size(h) >= QUEUE_LIMIT) {
    udp_dropped++;
    return;
  }
  udp_req *r = malloc(sizeof *r);
  r->buf = uv_buf_init(malloc(nread ? (size_t)nread : 1), (unsigned)nread);
  memcpy(r->buf.base, buf->base, (size_t)nread);
  if (uv_udp_send(&r->req, h, &r->buf, 1, addr, udp_send_cb) != 0) {
    free(r->buf.base);
    free(r);
    udp_dropped++;
  }
}

static int start_udp(int port) {
  udp_buf = malloc(UDP_CHUNK * UDP_CHUNKS);
  if (!udp_buf) return UV_ENOMEM;
  int r = uv_udp_init_ex(loop, &udp, AF_INET | UV_UDP_RECVMMSG);
  if (r != 0) return r;
  udp.data = NULL;
  struct sockaddr_in addr;
  uv_ip4_addr("0.0.0.0", port, &addr);
  r = uv_udp_bind(&udp, (const struct sockaddr *)&addr, 0);
  if (r == 0) r = uv_udp_recv_start(&udp, udp_alloc_cb, udp_recv_cb);
  if (r != 0) return r;
  if (!uv_udp_using_recvmmsg(&udp)) fprintf(stderr, "uv_echo: recvmmsg not in use\n");
  return 0;
}

static int start_tcp(int port) {
  uv_tcp_init(loop, &server);
  server.data = NULL;
  struct sockaddr_in addr;
  uv_ip4_addr("0.0.0.0", port, &addr);
  int r = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
  if (r == 0) r = uv_listen((uv_stream_t *)&server, 1024, on_connection);
  return r;
}

/* The port bound (the one picked for 0). */
static unsigned port_of(int use_udp) {
  struct sockaddr_in bound;
  int len = sizeof bound;
  if (use_udp) uv_udp_getsockname(&udp, (struct sockaddr *)&bound, &len);
  else uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &len);
  return ntohs(bound.sin_port);
}

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, on_close);
}

static void on_signal(uv_signal_t *h, int sig) {
  (void)h;
  (void)sig;
  uv_walk(loop, close_walk, NULL);
}

int main(int argc, char **argv) {
  int use_udp = argc == 3 && strcmp(argv[1], "--udp") == 0;
  if (argc != 2 + use_udp) {
    fprintf(stderr, "usage: %s [--udp] PORT\n", argv[0]);
    return 2;
  }
  int port = atoi(argv[argc - 1]);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  loop = uv_default_loop();
  int r = use_udp ? start_udp(port) : start_tcp(port);
  if (r != 0) {
    fprintf(stderr, "uv_echo: bind/listen: %s\n", uv_strerror(r));
    return 1;
  }
  printf("port %u\n", (unsigned)port_of(use_udp));
  fflush(stdout);

  uv_signal_init(loop, &sigterm);
  uv_signal_init(loop, &sigint);
  sigterm.data = sigint.data = NULL;
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_start(&sigint, on_signal, SIGINT);
  uv_run(loop, UV_RUN_DEFAULT);
  if (udp_dropped) fprintf(stderr, "uv_echo: %llu UDP replies dropped (send queue full)\n", udp_dropped);
  free(udp_buf);
  return uv_loop_close(loop) == 0 ? 0 : 1;
}
