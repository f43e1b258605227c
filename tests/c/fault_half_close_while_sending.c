/* The peer shuts its write side at once while we still send a large stream;
 * it keeps reading. Every byte we queued reaches it, in order, once.
 *  1. Default (allow_half_open false): 4 MiB queued from the CONNECTION
 *     callback, so before END can be delivered; netev writes them all, then
 *     shuts its side:
 *     "connection end close terminate", later sends give NETEV_ERR_CLOSED.
 *  2. allow_half_open: the host goes on sending 32 MiB (4 MiB under
 *     valgrind) after END, honouring BUFFER_FULL/DRAIN, then shuts down:
 *     without the DRAIN events, "connection end close terminate". */
#include "common_b.h"

/* The sequence without DRAIN events. */
static void seq_without_drain(recorder *r, char *out, size_t cap) {
  size_t used = 0;
  out[0] = 0;
  pthread_mutex_lock(&r->mu);
  for (int i = 0; i < r->n; i++) {
    int t = r->types[i];
    if (t == NETEV_EVENT_DRAIN) continue;
    int w = snprintf(out + used, cap - used, "%s%s", used ? " " : "", netev_event_type_name(t));
    if (w < 0 || (size_t)w >= cap - used) break;
    used += (size_t)w;
  }
  pthread_mutex_unlock(&r->mu);
}

static void check_peer_got(peer *p, size_t total) {
  CHECK(peer_wait_finished(p, 30)); /* read to EOF: our FIN came after the last byte */
  pthread_mutex_lock(&p->mu);
  if (p->got_len != total) FAIL("peer got %zu bytes, we sent %zu", p->got_len, total);
  if (!is_pattern(p->got, p->got_len, 0)) FAIL("peer got the bytes out of order or altered");
  pthread_mutex_unlock(&p->mu);
}

static unsigned char *big_buf;
static size_t big_len;
static netev_status big_status = NETEV_ERR_INTERNAL;

/* on_connection of case 1: queue the whole stream; END cannot come before. */
static void send_on_connect(netev_connection c, const netev_event *e, void *ud) {
  rec_event(ud, e);
  big_status = netev_connection_send(c, big_buf, big_len);
  rec_done(ud);
}

static int drains_above(recorder *r, size_t n) {
  int k = 0;
  for (int i = 0; i < r->n; i++) k += r->types[i] == NETEV_EVENT_DRAIN;
  return (size_t)k > n;
}

int main(void) {
  watchdog(120);

  /* 1. default: queued bytes go out, then netev shuts its side */
  {
    peer p;
    peer_start(&p, PEER_HALF_CLOSE, 0);
    recorder r;
    rec_init(&r);
    netev_connection_options o;
    CHECK_OK(netev_connection_options_init(&o));
    rec_set_all(&o, &r, rec_callback);
    o.on_connection = send_on_connect;
    size_t total = 4u << 20;
    big_buf = malloc(total);
    big_len = total;
    CHECK(big_buf);
    fill_pattern(big_buf, total, 0);
    netev_connection c;
    CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
    if (!rec_wait_terminated(&r, 30)) {
      char seq[512];
      rec_sequence(&r, seq, sizeof seq);
      FAIL("no TERMINATE; events so far: %s", seq);
    }
    CHECK_STATUS(big_status, NETEV_OK);
    free(big_buf);
    CHECK_SEQUENCE(&r, "connection end close terminate");
    CHECK(r.overlaps == 0 && r.after_terminate == 0 && r.data_len == 0);
    check_peer_got(&p, total);
    CHECK_STATUS(netev_connection_send(c, "x", 1), NETEV_ERR_CLOSED);
    CHECK_OK(netev_connection_release(c));
    peer_stop(&p);
    rec_free(&r);
  }

  /* 2. allow_half_open: the host keeps sending after END */
  {
    peer p;
    peer_start(&p, PEER_HALF_CLOSE, 0);
    recorder r;
    rec_init(&r);
    netev_connection_options o;
    CHECK_OK(netev_connection_options_init(&o));
    rec_set_all(&o, &r, rec_callback);
    o.allow_half_open = true;
    o.send_buffer_limit = 1u << 20;
    netev_connection c;
    CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
    CHECK(rec_wait_type(&r, NETEV_EVENT_END, 10));
    size_t total = (size_t)test_scale(32L << 20, 4L << 20), chunk = 200 * 1000, off = 0;
    unsigned char *b = malloc(chunk);
    CHECK(b);
    int refusals = 0;
    while (off < total) {
      size_t k = total - off < chunk ? total - off : chunk;
      fill_pattern(b, k, off);
      netev_status st = netev_connection_send(c, b, k);
      if (st == NETEV_ERR_BUFFER_FULL) {
        size_t drains = (size_t)rec_count(&r, NETEV_EVENT_DRAIN);
        refusals++;
        if (!rec_wait(&r, drains_above, drains, 20)) FAIL("no DRAIN after BUFFER_FULL at %zu", off);
        continue;
      }
      CHECK_OK(st);
      off += k;
    }
    free(b);
    printf("sent %zu bytes after END, %d BUFFER_FULL refusals\n", total, refusals);
    CHECK_OK(netev_connection_shutdown(c));
    if (!rec_wait_terminated(&r, 60)) {
      char seq[512];
      rec_sequence(&r, seq, sizeof seq);
      FAIL("no TERMINATE; events so far: %s", seq);
    }
    char seq[512];
    seq_without_drain(&r, seq, sizeof seq);
    if (strcmp(seq, "connection end close terminate") != 0)
      FAIL("event sequence (DRAIN left out) \"%s\", expected \"connection end close terminate\"", seq);
    CHECK(r.overlaps == 0 && r.after_terminate == 0 && r.data_len == 0);
    check_peer_got(&p, total);
    CHECK_OK(netev_connection_release(c));
    peer_stop(&p);
    rec_free(&r);
  }

  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
