/* The peer resets mid-stream (SO_LINGER 0, then close): the connection ends
 * with ERROR NETEV_ERR_CONNECTION_RESET then TERMINATE — "connection data*
 * error terminate" — and every byte the peer wrote and our kernel
 * acknowledged before the reset was delivered, in order, before the ERROR.
 * Two cases: the reset reaches an idle reader, and it reaches a connection
 * that is itself in the middle of sending a large stream. */
#include "common_b.h"
#include "common_listener.h"

#include <linux/sockios.h>
#include <sys/ioctl.h>

/* Bytes the peer wrote that our side has not acknowledged yet. */
static int outq_empty(void *arg) {
  int fd = *(int *)arg, n = -1;
  CHECK(ioctl(fd, SIOCOUTQ, &n) == 0);
  return n == 0;
}

static void reset_fd(int fd) {
  struct linger lg = {1, 0};
  CHECK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
  CHECK(close(fd) == 0);
}

static int accept_one(int lfd) {
  struct pollfd p = {lfd, POLLIN, 0};
  CHECK(poll(&p, 1, (int)(10000 * test_time_factor())) == 1);
  int fd = accept(lfd, NULL, NULL);
  CHECK(fd >= 0);
  return fd;
}

static void check_reset_end(netev_connection c, recorder *r, size_t want_bytes) {
  if (!rec_wait_terminated(r, 20)) {
    char seq[1024];
    rec_sequence(r, seq, sizeof seq);
    FAIL("no TERMINATE after the reset; events so far: %s", seq);
  }
  CHECK_SEQUENCE(r, "connection data* error terminate");
  if (r->error != NETEV_ERR_CONNECTION_RESET)
    FAIL("ERROR event carries %s, expected NETEV_ERR_CONNECTION_RESET", netev_status_name(r->error));
  if (r->data_len != want_bytes)
    FAIL("%zu bytes delivered before the reset, the peer wrote (and we acknowledged) %zu",
         r->data_len, want_bytes);
  CHECK(is_pattern(r->data, r->data_len, 0));
  CHECK(r->overlaps == 0 && r->after_terminate == 0);
  CHECK(has_error_entry(c, NETEV_ERR_CONNECTION_RESET));
  bool closed = false;
  CHECK_OK(netev_connection_closed(c, &closed));
  CHECK(closed);
  CHECK_STATUS(netev_connection_send(c, "x", 1), NETEV_ERR_CLOSED);
}

/* The peer writes `n` pattern bytes, waits until they are acknowledged, and resets. */
static void peer_write_acked_and_reset(int fd, size_t n) {
  unsigned char *b = malloc(n);
  CHECK(b);
  fill_pattern(b, n, 0);
  CHECK(write_all(fd, b, n) == 0);
  free(b);
  CHECK(poll_until(outq_empty, &fd, 20));
  reset_fd(fd);
}

int main(void) {
  watchdog(90);
  uint16_t port;
  int lfd = listen_loopback(&port, 4);

  /* 1. An idle reader: 256 KiB arrive, then the reset. */
  {
    recorder r;
    rec_init(&r);
    netev_connection_options o;
    CHECK_OK(netev_connection_options_init(&o));
    rec_set_all(&o, &r, rec_callback);
    netev_connection c;
    CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &c));
    int fd = accept_one(lfd);
    CHECK(rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10));
    peer_write_acked_and_reset(fd, 256 * 1024);
    check_reset_end(c, &r, 256 * 1024);
    CHECK_OK(netev_connection_release(c));
    rec_free(&r);
  }

  /* 2. We are sending 4 MiB (more than the socket buffers hold) while the
   * peer reads a little, writes 64 KiB back and resets. */
  {
    recorder r;
    rec_init(&r);
    netev_connection_options o;
    CHECK_OK(netev_connection_options_init(&o));
    rec_set_all(&o, &r, rec_callback);
    netev_connection c;
    CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &c));
    size_t big = 4u << 20;
    unsigned char *b = malloc(big);
    CHECK(b);
    memset(b, 0x5a, big);
    CHECK_OK(netev_connection_send(c, b, big));
    free(b);
    int fd = accept_one(lfd);
    CHECK(rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10));
    unsigned char in[65536];
    CHECK(bsd_recv_exact(fd, in, sizeof in, 10) == 0);
    peer_write_acked_and_reset(fd, 64 * 1024);
    check_reset_end(c, &r, 64 * 1024);
    size_t amount = 1;
    CHECK_OK(netev_connection_buffered_amount(c, &amount));
    CHECK(amount == 0); /* unsent bytes are dropped with the connection */
    CHECK_OK(netev_connection_release(c));
    rec_free(&r);
  }

  close(lfd);
  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
