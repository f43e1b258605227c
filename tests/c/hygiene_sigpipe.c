/* A host that keeps SIGPIPE's default disposition (terminate) writes, through
 * netev, to a peer that reset: the process is not killed, the connection
 * ends "connection [end] error terminate", and netev left
 * the SIGPIPE disposition and this thread's signal mask as they were. */
#include "common_b.h"
#include "common_listener.h"

static int disposition_is_default(void) {
  struct sigaction sa;
  CHECK(sigaction(SIGPIPE, NULL, &sa) == 0);
  return sa.sa_handler == SIG_DFL;
}

static int sigpipe_blocked(void) {
  sigset_t set;
  CHECK(pthread_sigmask(SIG_BLOCK, NULL, &set) == 0);
  return sigismember(&set, SIGPIPE);
}

int main(void) {
  watchdog(60);
  signal(SIGPIPE, SIG_DFL);
  CHECK(disposition_is_default() && !sigpipe_blocked());
  uint16_t port;
  int lfd = listen_loopback(&port, 4);
  recorder r;
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  o.send_buffer_limit = 64 * 1024;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", port, &o, &c));
  struct pollfd p = {lfd, POLLIN, 0};
  CHECK(poll(&p, 1, (int)(10000 * test_time_factor())) == 1);
  int fd = accept(lfd, NULL, NULL);
  CHECK(fd >= 0);
  CHECK(rec_wait_type(&r, NETEV_EVENT_CONNECTION, 10));
  /* The peer resets. */
  struct linger lg = {1, 0};
  CHECK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
  CHECK(close(fd) == 0);
  /* We keep writing into it until netev reports the error. */
  unsigned char chunk[16384];
  memset(chunk, 'p', sizeof chunk);
  double end = now_seconds() + 20 * test_time_factor();
  int sends = 0;
  while (!rec_wait_type(&r, NETEV_EVENT_TERMINATE, 0)) {
    if (now_seconds() > end) FAIL("no ERROR/TERMINATE after %d sends to a reset peer", sends);
    netev_status st = netev_connection_send(c, chunk, sizeof chunk);
    if (st == NETEV_ERR_BUFFER_FULL) {
      rec_wait_type(&r, NETEV_EVENT_TERMINATE, 0.01);
      continue;
    }
    if (st == NETEV_ERR_CLOSED) {
      CHECK(rec_wait_terminated(&r, 10));
      break;
    }
    CHECK_OK(st);
    sends++;
  }
  CHECK(rec_wait_terminated(&r, 10));
  /* The kernel reports a reset once: when the write path takes it, the
   * next read sees a plain EOF, so an END may come before the ERROR. */
  char seq[256];
  rec_sequence(&r, seq, sizeof seq);
  if (strcmp(seq, "connection error terminate") != 0 && strcmp(seq, "connection end error terminate") != 0)
    FAIL("event sequence \"%s\", expected \"connection [end] error terminate\"", seq);
  printf("ERROR %s after %d sends; the process lives\n", netev_status_name(r.error), sends);
  CHECK(r.error == NETEV_ERR_CONNECTION_RESET || r.error == NETEV_ERR_IO);
  CHECK(disposition_is_default() && !sigpipe_blocked());
  CHECK_OK(netev_connection_release(c));
  close(lfd);
  CHECK_OK(netev_runtime_shutdown(10));
  CHECK(disposition_is_default() && !sigpipe_blocked());
  rec_free(&r);
  return 0;
}
