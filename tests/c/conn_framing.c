/* Framing (issue 12): a netev listener whose connections cut frames, fed
 * by a BSD client that writes the stream in pieces of its choosing.
 *
 * - delimiter "\r\n": frames split at every byte, an empty frame, several
 *   frames in one write, a delimiter split across writes, the trailing
 *   partial frame at END;
 * - a frame over max_frame: ERROR NETEV_ERR_PROTOCOL, nothing of it
 *   delivered;
 * - length prefix (2 bytes): frames of 0, 1 and 300 bytes split at random
 *   points; a frame cut by END: ERROR NETEV_ERR_PROTOCOL after the whole
 *   frames;
 * - send_frame: the bytes on the wire are prefix + payload, or payload +
 *   delimiter; refused without framing, with the delimiter inside, or too
 *   long for the prefix;
 * - a fuzz: 3000 random frames written in random pieces, each arrives once,
 *   in order, byte-exact. */
#include "common_listener.h"

#define MAX_FRAMES 4096

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  size_t n;                 /* DATA events */
  size_t len[MAX_FRAMES];   /* each DATA's length */
  unsigned char *bytes;     /* every DATA's bytes, concatenated */
  size_t total, cap;
  int end, error, terminated;
  netev_status error_code;
  netev_connection conn;
} frames;

static frames F;

static void reset_frames(void) {
  free(F.bytes);
  pthread_mutex_lock(&F.mu);
  F.n = F.total = F.cap = 0;
  F.bytes = NULL;
  F.end = F.error = F.terminated = 0;
  F.error_code = NETEV_OK;
  F.conn = 0;
  pthread_mutex_unlock(&F.mu);
}

static void on_event(netev_connection c, const netev_event *e, void *ud) {
  (void)ud;
  pthread_mutex_lock(&F.mu);
  F.conn = c;
  switch (e->type) {
  case NETEV_EVENT_DATA:
    if (F.n == MAX_FRAMES) FAIL("too many frames");
    if (F.end || F.error) FAIL("DATA after END or ERROR");
    F.len[F.n++] = e->data_len;
    if (F.total + e->data_len > F.cap) {
      F.cap = (F.total + e->data_len) * 2 + 64;
      F.bytes = realloc(F.bytes, F.cap);
      CHECK(F.bytes);
    }
    if (e->data_len) memcpy(F.bytes + F.total, e->data, e->data_len);
    F.total += e->data_len;
    break;
  case NETEV_EVENT_END: F.end++; break;
  case NETEV_EVENT_ERROR:
    F.error++;
    F.error_code = e->error;
    break;
  case NETEV_EVENT_TERMINATE: F.terminated = 1; break;
  default: break;
  }
  pthread_cond_broadcast(&F.cv);
  pthread_mutex_unlock(&F.mu);
}

static int terminated(void *unused) {
  (void)unused;
  pthread_mutex_lock(&F.mu);
  int t = F.terminated;
  pthread_mutex_unlock(&F.mu);
  return t;
}

static netev_listener open_listener(netev_connection_options *defaults, uint16_t *port) {
  defaults->on_data = defaults->on_end = defaults->on_error = defaults->on_terminate = on_event;
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.bind_address = "127.0.0.1";
  lo.connection_defaults = defaults;
  netev_listener l;
  CHECK_OK(netev_listener_open(0, &lo, &l));
  CHECK_OK(netev_listener_port(l, port));
  return l;
}

/* Writes `b` in pieces of `piece` bytes, pausing a little between them so
 * that they arrive as separate reads more often than not (the test holds
 * whatever the reads are). */
static void write_pieces(int fd, const unsigned char *b, size_t n, size_t piece) {
  for (size_t at = 0; at < n; at += piece) {
    size_t k = n - at < piece ? n - at : piece;
    CHECK(write_all(fd, b + at, k) == 0);
    if (piece < 8) sleep_ms(1);
  }
}

static void finish_client(int fd) {
  close(fd);
  if (!poll_until(terminated, NULL, 10)) FAIL("no TERMINATE");
}

static void delimiter_cases(void) {
  TEST_STAGE = "delimiter split at every byte";
  netev_connection_options d;
  CHECK_OK(netev_connection_options_init(&d));
  d.framing = NETEV_FRAMING_DELIMITER;
  d.delimiter = (const uint8_t *)"\r\n";
  d.delimiter_len = 2;
  d.max_frame = 16;
  uint16_t port;
  netev_listener l = open_listener(&d, &port);
  const char *stream = "ab\r\n\r\ncd\r\r\n\ne\r\nlast";
  const char *want[] = {"ab", "", "cd\r", "\ne", "last"};
  for (size_t piece = 1; piece <= 6; piece++) {
    reset_frames();
    int fd = bsd_connect("127.0.0.1", port);
    write_pieces(fd, (const unsigned char *)stream, strlen(stream), piece);
    shutdown(fd, SHUT_WR);
    double end = now_seconds() + 10 * test_time_factor();
    for (;;) {
      pthread_mutex_lock(&F.mu);
      int done = F.end;
      pthread_mutex_unlock(&F.mu);
      if (done) break;
      if (now_seconds() > end) FAIL("no END (pieces of %zu)", piece);
      sleep_ms(2);
    }
    pthread_mutex_lock(&F.mu);
    if (F.n != 5) FAIL("pieces of %zu: %zu frames, expected 5", piece, F.n);
    size_t at = 0;
    for (size_t i = 0; i < 5; i++) {
      if (F.len[i] != strlen(want[i]) || memcmp(F.bytes + at, want[i], F.len[i]) != 0)
        FAIL("pieces of %zu: frame %zu is wrong", piece, i);
      at += F.len[i];
    }
    pthread_mutex_unlock(&F.mu);
    finish_client(fd);
  }

  TEST_STAGE = "a frame over max_frame";
  reset_frames();
  int fd = bsd_connect("127.0.0.1", port);
  const char *over = "ok\r\n0123456789abcdefXYZ"; /* 19 bytes without a delimiter */
  write_pieces(fd, (const unsigned char *)over, strlen(over), 5);
  if (!poll_until(terminated, NULL, 10)) FAIL("no TERMINATE after an overlong frame");
  CHECK(F.error == 1 && F.error_code == NETEV_ERR_PROTOCOL);
  CHECK(F.n == 1 && F.len[0] == 2 && memcmp(F.bytes, "ok", 2) == 0);
  close(fd);

  TEST_STAGE = "send_frame with a delimiter";
  reset_frames();
  fd = bsd_connect("127.0.0.1", port);
  CHECK(write_all(fd, (const unsigned char *)"hi\r\n", 4) == 0);
  double end = now_seconds() + 10 * test_time_factor();
  while (1) {
    pthread_mutex_lock(&F.mu);
    netev_connection c = F.n ? F.conn : 0;
    pthread_mutex_unlock(&F.mu);
    if (c) {
      CHECK_OK(netev_connection_send_frame(c, "pong", 4));
      CHECK_OK(netev_connection_send_frame(c, NULL, 0));
      CHECK_STATUS(netev_connection_send_frame(c, "a\r\nb", 4), NETEV_ERR_INVALID_ARGUMENT);
      CHECK_STATUS(netev_connection_send_frame(c, NULL, 3), NETEV_ERR_NULL_ARGUMENT);
      break;
    }
    if (now_seconds() > end) FAIL("no frame");
    sleep_ms(2);
  }
  unsigned char got[8];
  CHECK(bsd_recv_exact(fd, got, 8, 10) == 0);
  CHECK(memcmp(got, "pong\r\n\r\n", 8) == 0);
  finish_client(fd);
  CHECK_OK(netev_listener_terminate(l));
  CHECK_OK(netev_listener_release(l));
}

static void prefix_cases(void) {
  TEST_STAGE = "length prefix";
  netev_connection_options d;
  CHECK_OK(netev_connection_options_init(&d));
  d.framing = NETEV_FRAMING_LENGTH_PREFIX;
  d.length_prefix_bytes = 2;
  d.max_frame = 1000;
  uint16_t port;
  netev_listener l = open_listener(&d, &port);
  unsigned char stream[600];
  size_t n = 0;
  size_t sizes[3] = {0, 1, 300};
  for (int i = 0; i < 3; i++) {
    stream[n++] = (unsigned char)(sizes[i] >> 8);
    stream[n++] = (unsigned char)sizes[i];
    fill_pattern(stream + n, sizes[i], 0);
    n += sizes[i];
  }
  /* then a frame announced as 500 bytes, cut after 10 by END */
  stream[n++] = 500 >> 8;
  stream[n++] = 500 & 0xff;
  memset(stream + n, 'x', 10);
  n += 10;
  for (size_t piece = 1; piece <= 301; piece += 50) {
    reset_frames();
    int fd = bsd_connect("127.0.0.1", port);
    write_pieces(fd, stream, n, piece);
    shutdown(fd, SHUT_WR);
    if (!poll_until(terminated, NULL, 10)) FAIL("no TERMINATE (pieces of %zu)", piece);
    pthread_mutex_lock(&F.mu);
    CHECK(F.n == 3 && F.len[0] == 0 && F.len[1] == 1 && F.len[2] == 300);
    CHECK(F.bytes[0] == pattern_byte(0) && is_pattern(F.bytes + 1, 300, 0));
    CHECK(F.end == 0 && F.error == 1 && F.error_code == NETEV_ERR_PROTOCOL);
    pthread_mutex_unlock(&F.mu);
    close(fd);
  }

  TEST_STAGE = "send_frame with a length prefix";
  reset_frames();
  int fd = bsd_connect("127.0.0.1", port);
  const unsigned char one[] = {0, 3, 'a', 'b', 'c'};
  CHECK(write_all(fd, one, sizeof one) == 0);
  double end = now_seconds() + 10 * test_time_factor();
  netev_connection c = 0;
  while (!c) {
    pthread_mutex_lock(&F.mu);
    c = F.n ? F.conn : 0;
    pthread_mutex_unlock(&F.mu);
    if (now_seconds() > end) FAIL("no frame");
    if (!c) sleep_ms(2);
  }
  static unsigned char big[70000];
  CHECK_STATUS(netev_connection_send_frame(c, big, sizeof big), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_OK(netev_connection_send_frame(c, "xyz", 3));
  unsigned char got[5];
  CHECK(bsd_recv_exact(fd, got, 5, 10) == 0);
  CHECK(got[0] == 0 && got[1] == 3 && memcmp(got + 2, "xyz", 3) == 0);
  finish_client(fd);
  CHECK_OK(netev_listener_terminate(l));
  CHECK_OK(netev_listener_release(l));
}

static uint64_t rng = 0x2545F4914F6CDD1DULL;
static uint32_t rnd(uint32_t n) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng % n);
}

static void fuzz(int use_prefix) {
  TEST_STAGE = use_prefix ? "fuzz, length prefix" : "fuzz, delimiter";
  netev_connection_options d;
  CHECK_OK(netev_connection_options_init(&d));
  if (use_prefix) {
    d.framing = NETEV_FRAMING_LENGTH_PREFIX; /* 4 bytes */
  } else {
    d.framing = NETEV_FRAMING_DELIMITER;
    d.delimiter = (const uint8_t *)"<|>";
    d.delimiter_len = 3;
  }
  uint16_t port;
  netev_listener l = open_listener(&d, &port);
  reset_frames();
  size_t count = (size_t)test_scale(3000, 600);
  size_t *lens = calloc(count, sizeof *lens);
  unsigned char *payloads = malloc(count * 200);
  unsigned char *stream = malloc(count * 210);
  CHECK(lens && payloads && stream);
  size_t n = 0, pn = 0;
  for (size_t i = 0; i < count; i++) {
    size_t len = rnd(200);
    lens[i] = len;
    /* bytes from "<|>ab": delimiter pieces everywhere, never the whole */
    for (size_t k = 0; k < len; k++) {
      unsigned char b = (unsigned char)"<|>ab"[rnd(5)];
      if (!use_prefix && b == '>' && k >= 2 && payloads[pn + k - 1] == '|' && payloads[pn + k - 2] == '<') b = 'a';
      payloads[pn + k] = b;
    }
    if (use_prefix) {
      stream[n++] = 0, stream[n++] = 0, stream[n++] = (unsigned char)(len >> 8), stream[n++] = (unsigned char)len;
    }
    memcpy(stream + n, payloads + pn, len);
    n += len;
    if (!use_prefix) {
      /* a payload ending in "<" or "<|" would join the delimiter: the
       * sender's job (send_frame refuses it); keep it out of the stream */
      if (len >= 1 && (payloads[pn + len - 1] == '<' || payloads[pn + len - 1] == '|')) {
        payloads[pn + len - 1] = 'b';
        stream[n - 1] = 'b';
      }
      memcpy(stream + n, "<|>", 3);
      n += 3;
    }
    pn += len;
  }
  int fd = bsd_connect("127.0.0.1", port);
  for (size_t at = 0; at < n;) {
    size_t k = 1 + rnd(700);
    if (k > n - at) k = n - at;
    CHECK(write_all(fd, stream + at, k) == 0);
    at += k;
  }
  shutdown(fd, SHUT_WR);
  double end = now_seconds() + 30 * test_time_factor();
  for (;;) {
    pthread_mutex_lock(&F.mu);
    int done = F.end;
    pthread_mutex_unlock(&F.mu);
    if (done) break;
    if (now_seconds() > end) FAIL("no END after the fuzz stream (%zu frames so far)", F.n);
    sleep_ms(5);
  }
  pthread_mutex_lock(&F.mu);
  if (F.n != count) FAIL("%zu frames, expected %zu", F.n, count);
  size_t at = 0;
  for (size_t i = 0; i < count; i++) {
    if (F.len[i] != lens[i]) FAIL("frame %zu: %zu bytes, expected %zu", i, F.len[i], lens[i]);
    at += lens[i];
  }
  CHECK(at == pn && memcmp(F.bytes, payloads, pn) == 0);
  CHECK(F.error == 0);
  pthread_mutex_unlock(&F.mu);
  finish_client(fd);
  free(lens);
  free(payloads);
  free(stream);
  CHECK_OK(netev_listener_terminate(l));
  CHECK_OK(netev_listener_release(l));
}

int main(void) {
  watchdog_staged("conn_framing", 120);
  pthread_mutex_init(&F.mu, NULL);
  pthread_cond_init(&F.cv, NULL);
  delimiter_cases();
  prefix_cases();
  fuzz(0);
  fuzz(1);

  TEST_STAGE = "send_frame without framing";
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  netev_connection c;
  CHECK_OK(netev_connection_open("127.0.0.1", 9, &o, &c)); /* refused or not: the call is checked first */
  CHECK_STATUS(netev_connection_send_frame(c, "x", 1), NETEV_ERR_INVALID_ARGUMENT);
  CHECK_OK(netev_connection_release(c));
  reset_frames();
  CHECK_OK(netev_runtime_shutdown(5));
  printf("conn_framing: ok\n");
  return 0;
}
