/* END and half-open connections: the peer ending first (with and without
 * allow_half_open), and we ending first against an echo peer. */
#include "common_b.h"

static const char REPLY[] = "reply sent from on_end";
static const char MORE[] = "more bytes after END, half-open";

typedef struct end_state {
  recorder rec;
  netev_status reply_status; /* send from the END callback */
  int closed_in_end;         /* netev_connection_closed inside the END callback */
  int send_reply;
} end_state;

static void end_cb(netev_connection c, const netev_event *e, void *ud) {
  end_state *s = ud;
  /* Before rec_event, so that whoever sees END recorded sees these too. */
  if (e->type == NETEV_EVENT_END) {
    bool closed = false;
    CHECK_OK(netev_connection_closed(c, &closed));
    s->closed_in_end = closed;
    if (s->send_reply) s->reply_status = netev_connection_send(c, REPLY, strlen(REPLY));
  }
  rec_event(&s->rec, e);
  rec_done(&s->rec);
}

/* Peer shuts its write side first; allow_half_open false. */
static void test_peer_ends_auto_shutdown(void) {
  peer p;
  peer_start(&p, PEER_HALF_CLOSE, 0);
  end_state s;
  memset(&s, 0, sizeof s);
  rec_init(&s.rec);
  s.reply_status = NETEV_ERR_INTERNAL;
  s.send_reply = 1;
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &s.rec, end_cb);
  o.user_data = &s;
  CHECK(!o.allow_half_open); /* the default */
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK(rec_wait_terminated(&s.rec, 10));
  CHECK_SEQUENCE(&s.rec, "connection end close terminate");
  CHECK_STATUS(s.reply_status, NETEV_OK);
  CHECK(s.closed_in_end); /* closed at END without half-open */
  bool closed = false;
  CHECK_OK(netev_connection_closed(c, &closed));
  CHECK(closed);
  /* The reply went out before netev shut our side: the peer read exactly it, then EOF. */
  CHECK(peer_wait_finished(&p, 10));
  pthread_mutex_lock(&p.mu);
  int same = p.got_len == strlen(REPLY) && memcmp(p.got, REPLY, strlen(REPLY)) == 0;
  size_t got = p.got_len;
  pthread_mutex_unlock(&p.mu);
  if (!same) FAIL("peer got %zu bytes, expected the %zu-byte reply", got, strlen(REPLY));
  CHECK_STATUS(netev_connection_send(c, "late", 4), NETEV_ERR_CLOSED);
  CHECK(has_error_entry(c, NETEV_ERR_CLOSED));
  CHECK(s.rec.overlaps == 0 && s.rec.after_terminate == 0);
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  rec_free(&s.rec);
}

/* Peer shuts its write side first; allow_half_open true. */
static void test_peer_ends_half_open(void) {
  peer p;
  peer_start(&p, PEER_HALF_CLOSE, 0);
  end_state s;
  memset(&s, 0, sizeof s);
  rec_init(&s.rec);
  s.closed_in_end = -1;
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &s.rec, end_cb);
  o.user_data = &s;
  o.allow_half_open = true;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK(rec_wait_type(&s.rec, NETEV_EVENT_END, 10));
  CHECK(s.closed_in_end == 0);
  bool closed = true;
  CHECK_OK(netev_connection_closed(c, &closed));
  CHECK(!closed);
  /* Still open: we keep sending after END and the peer gets it. */
  CHECK_OK(netev_connection_send(c, MORE, 10));
  CHECK_OK(netev_connection_send(c, MORE + 10, strlen(MORE) - 10));
  CHECK(peer_wait_got(&p, strlen(MORE), 10));
  pthread_mutex_lock(&p.mu);
  int peer_done = p.finished;
  pthread_mutex_unlock(&p.mu);
  CHECK(!peer_done); /* no EOF yet: our write side is open */
  CHECK_SEQUENCE(&s.rec, "connection end");
  CHECK_OK(netev_connection_closed(c, &closed));
  CHECK(!closed);
  /* Now we end: CLOSE, TERMINATE. */
  CHECK_OK(netev_connection_shutdown(c));
  CHECK_OK(netev_connection_closed(c, &closed));
  CHECK(closed);
  CHECK(rec_wait_terminated(&s.rec, 10));
  CHECK_SEQUENCE(&s.rec, "connection end close terminate");
  CHECK(peer_wait_finished(&p, 10));
  pthread_mutex_lock(&p.mu);
  int same = p.got_len == strlen(MORE) && memcmp(p.got, MORE, strlen(MORE)) == 0;
  pthread_mutex_unlock(&p.mu);
  CHECK(same);
  CHECK_STATUS(netev_connection_send(c, "late", 4), NETEV_ERR_CLOSED);
  CHECK(s.rec.overlaps == 0 && s.rec.after_terminate == 0);
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  rec_free(&s.rec);
}

/* We end first against an echo peer: queued bytes go out, the echo comes
 * back, then the peer's END, CLOSE, TERMINATE. */
static void test_we_end_first(int half_open) {
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  recorder r;
  rec_init(&r);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  rec_set_all(&o, &r, rec_callback);
  o.allow_half_open = half_open;
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  /* Sent and shut down at once, before the connection is even established. */
  CHECK_OK(netev_connection_send(c, "abc", 3));
  CHECK_OK(netev_connection_send(c, "defgh", 5));
  CHECK_OK(netev_connection_shutdown(c));
  /* Again is harmless: OK, or CLOSED if the connection already ended meanwhile. */
  netev_status again = netev_connection_shutdown(c);
  CHECK(again == NETEV_OK || again == NETEV_ERR_CLOSED);
  bool closed = false;
  CHECK_OK(netev_connection_closed(c, &closed));
  CHECK(closed);
  CHECK_STATUS(netev_connection_send(c, "x", 1), NETEV_ERR_CLOSED);
  CHECK(rec_wait_terminated(&r, 10));
  CHECK_SEQUENCE(&r, "connection data* end close terminate");
  CHECK(r.data_len == 8 && memcmp(r.data, "abcdefgh", 8) == 0);
  CHECK(r.overlaps == 0 && r.after_terminate == 0);
  CHECK_STATUS(netev_connection_shutdown(c), NETEV_ERR_CLOSED); /* ended */
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  rec_free(&r);
}

int main(void) {
  watchdog(60);
  test_peer_ends_auto_shutdown();
  test_peer_ends_half_open();
  test_we_end_first(0);
  test_we_end_first(1);
  CHECK_OK(netev_runtime_shutdown(10));
  return 0;
}
