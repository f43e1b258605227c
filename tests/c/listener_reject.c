/* on_connection returning false closes the incoming socket at once: a BSD
 * client sees EOF (or a reset) promptly, a netev client ends properly, and
 * no callback of connection_defaults ever fires for a rejected connection
 * (nor its user_data_free). The log says "rejected". */
#include "common_listener.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int default_calls; /* connection_defaults callbacks */
static int default_frees; /* connection_defaults.user_data_free calls */
static char log_buf[65536];
static size_t log_len;

static void default_cb(netev_connection c, const netev_event *e, void *ud) {
  (void)c;
  (void)e;
  (void)ud;
  pthread_mutex_lock(&mu);
  default_calls++;
  pthread_mutex_unlock(&mu);
}

static void default_free(void *ud) {
  (void)ud;
  pthread_mutex_lock(&mu);
  default_frees++;
  pthread_mutex_unlock(&mu);
}

static void log_cb(const char *line, void *ud) {
  (void)ud;
  pthread_mutex_lock(&mu);
  size_t n = strlen(line);
  if (log_len + n + 2 < sizeof log_buf) {
    memcpy(log_buf + log_len, line, n);
    log_len += n;
    log_buf[log_len++] = '\n';
    log_buf[log_len] = 0;
  }
  pthread_mutex_unlock(&mu);
}

/* Lines of the log saying "listener <id> <what>…". */
static int count_log(netev_listener l, const char *what) {
  char needle[96];
  snprintf(needle, sizeof needle, " listener %llu %s", (unsigned long long)l, what);
  int k = 0;
  pthread_mutex_lock(&mu);
  for (const char *p = log_buf; (p = strstr(p, needle)) != NULL; p += strlen(needle)) k++;
  pthread_mutex_unlock(&mu);
  return k;
}

static int marker;

int main(void) {
  watchdog(60);
  CHECK_OK(netev_log_set_callback(log_cb, NULL));
  lsn_server s;
  lsn_init(&s);
  s.reject = 1;
  netev_connection_options defaults;
  CHECK_OK(netev_connection_options_init(&defaults));
  netev_listener_options o;
  lsn_options(&s, &o);
  o.bind_address = "127.0.0.1";
  o.connection_defaults = &defaults;
  netev_connection_options *d = &defaults;
  d->on_connection = d->on_data = d->on_shutdown = d->on_error = default_cb;
  d->on_terminate = d->on_drain = d->on_end = default_cb;
  d->user_data = &marker;
  d->user_data_free = default_free;
  s.want_user_data = &marker;
  netev_listener l;
  CHECK_OK(netev_listener_open(0, &o, &l));
  pthread_mutex_lock(&s.mu);
  s.listener = l;
  pthread_mutex_unlock(&s.mu);
  uint16_t port = 0;
  CHECK_OK(netev_listener_port(l, &port));

  /* A BSD client: connect succeeds (the kernel completed the handshake),
   * then the stream ends at once. */
  int fd = bsd_connect("127.0.0.1", port);
  CHECK(fd >= 0);
  double t0 = now_seconds();
  int end = bsd_recv_end(fd, 5);
  if (end != 0 && end != ECONNRESET)
    FAIL("rejected BSD client: recv gave %s, expected EOF or ECONNRESET",
         end == -1 ? "data" : strerror(end));
  printf("BSD client saw %s after %.3f s\n", end == 0 ? "EOF" : "ECONNRESET", now_seconds() - t0);
  close(fd);
  CHECK(lsn_wait(&s, lsn_pred_accepts, 1, 5));

  /* A netev client ends properly, whichever way the close looks. */
  recorder r;
  rec_init(&r);
  netev_connection c = client_open("127.0.0.1", port, &r);
  if (!rec_wait_terminated(&r, 10)) FAIL("the rejected netev client never terminated");
  char seq[1024];
  rec_sequence(&r, seq, sizeof seq);
  if (strcmp(seq, "connection end close terminate") != 0 &&
      strcmp(seq, "connection error terminate") != 0)
    FAIL("rejected netev client: sequence \"%s\"", seq);
  printf("netev client: %s\n", seq);
  CHECK(r.overlaps == 0);
  CHECK_OK(netev_connection_release(c));
  rec_free(&r);
  CHECK(lsn_wait(&s, lsn_pred_accepts, 2, 5));

  /* Rejected connections get no callback at all. */
  lsn_check_clean(&s);
  CHECK(lsn_get(&s, &s.accepts) == 2);
  CHECK(lsn_get(&s, &s.nconns) == 0);
  CHECK(lsn_get(&s, &s.errors) == 0);
  size_t nerr = 99;
  CHECK_OK(netev_listener_error_count(l, &nerr));
  CHECK(nerr == 0);
  CHECK_OK(netev_listener_release(l));
  CHECK(lsn_wait(&s, lsn_pred_terminated, 0, 10));
  CHECK_LSN_SEQUENCE(&s, "connection connection terminate");
  CHECK_OK(netev_runtime_shutdown(10));
  pthread_mutex_lock(&mu);
  if (default_calls) FAIL("%d connection_defaults callbacks for rejected connections", default_calls);
  if (default_frees) FAIL("user_data_free ran %d times for rejected connections", default_frees);
  pthread_mutex_unlock(&mu);

  /* The log names each rejection: "listener <id> rejected …". */
  CHECK_OK(netev_log_set_callback(NULL, NULL));
  int rejected = count_log(l, "rejected");
  if (rejected != 2) {
    pthread_mutex_lock(&mu);
    fprintf(stderr, "log:\n%s", log_buf);
    pthread_mutex_unlock(&mu);
    FAIL("%d \"listener %llu rejected\" log lines, expected 2", rejected, (unsigned long long)l);
  }
  if (count_log(l, "accepted") != 0) FAIL("the log says a rejected connection was accepted");
  lsn_free(&s);
  return 0;
}
