/* Accept failing for lack of file descriptors: the listener reports ERROR
 * (NETEV_ERR_IO, os_error EMFILE, also in its errors list) with a back-off
 * instead of spinning, keeps going, and accepts the waiting connection once
 * descriptors are free again. */
#include "common_listener.h"

#define MAX_DUPS 70000

int main(void) {
  watchdog(60);
  if (getenv("NETEV_TEST_VALGRIND")) {
    /* valgrind enforces its own descriptor limit after the kernel call: an
     * accept() above it is closed and reported as EMFILE, so the waiting
     * connection itself is lost and can never be accepted later. */
    printf("skipped under valgrind: it emulates RLIMIT_NOFILE by closing accepted fds\n");
    return 0;
  }
  lsn_server s;
  lsn_init(&s);
  uint16_t port = lsn_open(&s, "127.0.0.1");

  /* The client socket exists before descriptors run out. */
  int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(cfd >= 0);
  struct timeval tv = {20, 0};
  CHECK(setsockopt(cfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
  CHECK(setsockopt(cfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  CHECK(devnull >= 0);
  int *dups = malloc(MAX_DUPS * sizeof *dups);
  CHECK(dups != NULL);

  /* Lower the soft limit (cheaper to fill), then fill it. */
  struct rlimit saved, low;
  CHECK(getrlimit(RLIMIT_NOFILE, &saved) == 0);
  low = saved;
  if (low.rlim_cur > 512) low.rlim_cur = 512;
  CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);
  int ndups = 0;
  for (;;) {
    int fd = dup(devnull);
    if (fd < 0) {
      if (errno != EMFILE) FAIL("dup: %s", strerror(errno));
      break;
    }
    if (ndups == MAX_DUPS) FAIL("more than %d descriptors and still no EMFILE", MAX_DUPS);
    dups[ndups++] = fd;
  }

  /* The kernel completes the handshake; accept then fails with EMFILE. */
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  CHECK(connect(cfd, (struct sockaddr *)&a, sizeof a) == 0);
  if (!lsn_wait(&s, lsn_pred_errors, 1, 10)) FAIL("no listener ERROR while descriptors ran out");

  /* Measure: errors over one second must come with a back-off, not a spin. */
  int e0 = lsn_get(&s, &s.errors);
  sleep_ms(1000);
  int e1 = lsn_get(&s, &s.errors);
  printf("listener ERROR events: %d, then %d more in 1 s\n", e0, e1 - e0);
  if (e1 - e0 >= 50) FAIL("%d listener ERROR events in 1 s: accept is busy-looping", e1 - e0);
  CHECK(lsn_get(&s, &s.accepts) == 0);

  pthread_mutex_lock(&s.mu);
  netev_status code = s.last_error.error;
  int32_t os_error = s.last_error.os_error;
  int type = (int)s.last_error.type;
  char message[256];
  snprintf(message, sizeof message, "%s", s.last_error_message);
  pthread_mutex_unlock(&s.mu);
  CHECK(type == NETEV_EVENT_ERROR);
  if (code != NETEV_ERR_IO || os_error != EMFILE)
    FAIL("listener ERROR event: %s os_error %d, expected NETEV_ERR_IO os_error EMFILE (%d)",
         netev_status_name(code), os_error, EMFILE);
  CHECK(message[0] != 0);
  size_t nerr = 0;
  CHECK_OK(netev_listener_error_count(s.listener, &nerr));
  CHECK(nerr >= 1 && nerr <= 64);
  netev_error_info info;
  CHECK_OK(netev_listener_error_at(s.listener, nerr - 1, &info));
  if (info.code != NETEV_ERR_IO || info.os_error != EMFILE)
    FAIL("listener errors list: %s os_error %d, expected NETEV_ERR_IO os_error EMFILE",
         netev_status_name(info.code), info.os_error);
  CHECK(info.message[0] != 0 && info.component[0] != 0);

  /* Free the descriptors: the waiting connection is accepted and echoes. */
  for (int i = 0; i < ndups; i++) close(dups[i]);
  CHECK(setrlimit(RLIMIT_NOFILE, &saved) == 0);
  double freed = now_seconds();
  if (!lsn_wait(&s, lsn_pred_conns, 1, 10))
    FAIL("the waiting connection was not accepted within 10 s of descriptors coming back");
  printf("accepted %.3f s after descriptors came back\n", now_seconds() - freed);
  CHECK(write_all(cfd, (const unsigned char *)"alive", 5) == 0);
  unsigned char b[5];
  CHECK(bsd_recv_exact(cfd, b, 5, 10) == 0 && memcmp(b, "alive", 5) == 0);
  CHECK(shutdown(cfd, SHUT_WR) == 0);
  CHECK(bsd_recv_end(cfd, 10) == 0);
  close(cfd);
  CHECK(lsn_wait(&s, lsn_pred_conn_terminates, 1, 10));
  lsn_conn *lc = lsn_conn_at(&s, 0, 1);
  CHECK_SEQUENCE(&lc->r, "connection data* end close terminate");
  CHECK(strcmp(lc->ip, "127.0.0.1") == 0);
  lsn_check_clean(&s);

  /* The listener still works for a new client. */
  int fd2 = bsd_connect("127.0.0.1", port);
  CHECK(fd2 >= 0);
  CHECK(write_all(fd2, (const unsigned char *)"again", 5) == 0);
  CHECK(bsd_recv_exact(fd2, b, 5, 10) == 0 && memcmp(b, "again", 5) == 0);
  close(fd2);
  CHECK(lsn_wait(&s, lsn_pred_conn_terminates, 2, 10));

  CHECK_OK(netev_listener_release(s.listener));
  CHECK(lsn_wait(&s, lsn_pred_terminated, 0, 10));
  CHECK_OK(netev_runtime_shutdown(10));
  CHECK(lsn_get(&s, &s.terminates) == 1 && lsn_get(&s, &s.after_terminate) == 0);
  close(devnull);
  free(dups);
  lsn_free(&s);
  return 0;
}
