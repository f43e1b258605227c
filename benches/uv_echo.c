/* uv_echo: the benchmark's echo server on libuv (Debian's libuv1-dev).
 *
 * Usage: uv_echo PORT      (0 picks a free port; first line "port N")
 *
 * libuv at its best, not its tutorial: one shared 64 KiB read buffer (the
 * loop is single-threaded), uv_try_write first, and only bytes the kernel
 * would not take are copied into a uv_write request. Past 1 MiB queued the
 * connection stops reading until the queue drains (backpressure). An idle
 * connection holds only its uv_tcp_t. SIGTERM/SIGINT: close every handle,
 * let the loop end, exit 0.
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
  if (argc != 2) {
    fprintf(stderr, "usage: %s PORT\n", argv[0]);
    return 2;
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  loop = uv_default_loop();
  uv_tcp_init(loop, &server);
  server.data = NULL;
  struct sockaddr_in addr;
  uv_ip4_addr("0.0.0.0", atoi(argv[1]), &addr);
  int r = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
  if (r == 0) r = uv_listen((uv_stream_t *)&server, 1024, on_connection);
  if (r != 0) {
    fprintf(stderr, "uv_echo: bind/listen: %s\n", uv_strerror(r));
    return 1;
  }
  struct sockaddr_in bound;
  int len = sizeof bound;
  uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &len);
  printf("port %u\n", (unsigned)ntohs(bound.sin_port));
  fflush(stdout);

  uv_signal_init(loop, &sigterm);
  uv_signal_init(loop, &sigint);
  sigterm.data = sigint.data = NULL;
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_start(&sigint, on_signal, SIGINT);
  uv_run(loop, UV_RUN_DEFAULT);
  return uv_loop_close(loop) == 0 ? 0 : 1;
}
