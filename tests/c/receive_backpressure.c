/* Receive backpressure: a dispatcher-bound connection whose host does not
 * dispatch while the peer floods 64 MiB. netev must stop reading (the peer's
 * writes stall) instead of buffering: the process grows by far less than the
 * flood. Once the host dispatches, all 64 MiB arrive byte-exact, in order. */
#include "common_b.h"

#define FLOOD ((size_t)64 * 1024 * 1024)
#define MAX_GROWTH_KIB (32L * 1024)

typedef struct flood_state {
  recorder rec;      /* events (DATA recorded once per run, without bytes) */
  size_t off;        /* stream bytes received so far */
  size_t bad_at;     /* first offset that broke the pattern, or SIZE_MAX */
  size_t data_events;
  pthread_t main_thread;
  int wrong_thread;
} flood_state;

static void flood_cb(netev_connection c, const netev_event *e, void *ud) {
  flood_state *s = ud;
  (void)c;
  if (!pthread_equal(pthread_self(), s->main_thread)) s->wrong_thread++;
  if (e->type == NETEV_EVENT_DATA) {
    if (s->bad_at == SIZE_MAX && !is_pattern(e->data, e->data_len, s->off)) {
      for (size_t i = 0; i < e->data_len; i++)
        if (e->data[i] != pattern_byte(s->off + i)) {
          s->bad_at = s->off + i;
          break;
        }
    }
    s->off += e->data_len;
    s->data_events++;
    /* Record the type, not the bytes, and only once per run of DATA. */
    if (s->rec.n > 0 && s->rec.types[s->rec.n - 1] == NETEV_EVENT_DATA) return;
    netev_event copy = *e;
    copy.data = NULL;
    copy.data_len = 0;
    rec_event(&s->rec, &copy);
    rec_done(&s->rec);
    return;
  }
  rec_event(&s->rec, e);
  rec_done(&s->rec);
}

int main(void) {
  watchdog(120);
  flood_peer p;
  flood_peer_start(&p, FLOOD);
  netev_dispatcher d;
  CHECK_OK(netev_dispatcher_create(&d));
  int fd;
  CHECK_OK(netev_dispatcher_fd(d, &fd));

  flood_state *s = calloc(1, sizeof *s);
  CHECK(s);
  rec_init(&s->rec);
  s->bad_at = SIZE_MAX;
  s->main_thread = pthread_self();
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &s->rec, flood_cb);
  o.user_data = s;
  o.dispatcher = d;

  long rss_before = rss_kib();
  CHECK(rss_before > 0);
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));

  /* Do not dispatch: wait until the peer's writes stall for 300 ms. */
  int stalled = flood_peer_wait_stall(&p, 0.3, 60);
  size_t written = flood_peer_written(&p);
  if (stalled == 0) FAIL("the peer wrote all %zu bytes while nobody dispatched: netev buffered them", FLOOD);
  if (stalled < 0) FAIL("the peer's writes never stalled (%zu bytes written)", written);
  CHECK(written < FLOOD);
  CHECK(s->rec.total == 0); /* nothing ran: nobody dispatched */
  CHECK(fd_readable(fd, 0)); /* but callbacks are queued */
  long rss_stalled = rss_kib();
  CHECK(rss_stalled > 0);
  long growth = rss_stalled - rss_before;
  printf("peer stalled after %zu bytes; RSS grew %ld KiB\n", written, growth);
  if (growth >= MAX_GROWTH_KIB)
    FAIL("RSS grew by %ld KiB while the host did not dispatch (limit %ld KiB)", growth, MAX_GROWTH_KIB);

  /* Now dispatch until TERMINATE, on this thread. */
  double end = now_seconds() + 90;
  while (!s->rec.terminated) {
    if (now_seconds() > end) FAIL("no TERMINATE; %zu of %zu bytes received", s->off, FLOOD);
    fd_readable(fd, 200);
    CHECK_OK(netev_dispatcher_run(d, 0, NULL));
  }
  if (s->bad_at != SIZE_MAX) FAIL("pattern broken at stream offset %zu", s->bad_at);
  if (s->off != FLOOD) FAIL("received %zu bytes, expected %zu", s->off, FLOOD);
  CHECK(s->data_events > 0);
  CHECK_SEQUENCE(&s->rec, "connection data* end close terminate");
  CHECK(s->wrong_thread == 0);
  CHECK(s->rec.after_terminate == 0);
  long rss_end = rss_kib();
  printf("RSS grew %ld KiB by the end\n", rss_end - rss_before);

  CHECK_OK(netev_connection_release(c));
  CHECK_OK(netev_dispatcher_release(d));
  CHECK_OK(netev_runtime_shutdown(10));
  flood_peer_stop(&p);
  rec_free(&s->rec);
  free(s);
  return 0;
}
