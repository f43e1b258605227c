/* statsd_sink: a small StatsD receiver. Applications send it metrics over
 * UDP, fire and forget; it adds them up and prints a summary.
 *
 * Each datagram holds one or more lines, separated by '\n' (a '\r' before
 * it is ignored):
 *
 *   name:value|c[|@rate]   counter: adds value (value / rate when sampled)
 *   name:value|g           gauge: set to value
 *   name:+value|g          gauge: changed by +value or -value (StatsD's rule:
 *   name:-value|g          a sign means a change, so a negative gauge is set
 *                          by setting 0 first)
 *   name:value|ms[|@rate]  timer: one sample in milliseconds (>= 0); the
 *                          summary has count, min, max, mean and sum
 *
 * A `|#tags` field (DogStatsD) is accepted and ignored. A name is 1 to 200
 * printable ASCII characters without ':', '|' or '@'; a value is a finite
 * decimal number. Anything else is a bad line: counted and shown (the first
 * few), never fatal. Counters, gauges and timers are kept per name since the
 * start (at most MAX_METRICS of them; lines for more names are counted as
 * dropped), and the whole table is printed, sorted by name, every
 * --interval seconds when something arrived, and once more at exit.
 *
 * Every callback runs on the main thread: the socket is bound to a
 * netev_dispatcher, which main runs from its poll() loop beside the signal
 * pipe and the summary timer (as dispatch_client does for a connection). So
 * the table needs no lock, and printing it never races with an update.
 *
 * Usage: statsd_sink [--interval SECONDS] [PORT]
 *   SECONDS: between summaries (default 10; fractions allowed).
 *   PORT: 0 or nothing picks a free port (StatsD's usual one is 8125).
 * The first line on stdout is "listening on port N". SIGINT or SIGTERM:
 * what already arrived is counted, the final summary printed, exit 0.
 *
 * Try it:  echo -n 'hits:1|c' | socat - UDP-DATAGRAM:127.0.0.1:PORT
 */
#define _POSIX_C_SOURCE 200809L

#include <netev.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_METRICS 8192
#define TABLE_SIZE (2 * MAX_METRICS) /* open addressing, at most half full */
#define MAX_NAME 200
#define BAD_LINES_SHOWN 10

typedef enum { COUNTER, GAUGE, TIMER } kind;
static const char *const KIND_NAME[] = {"counter", "gauge", "timer"};

typedef struct {
  char *name; /* NULL: a free slot */
  kind kind;
  double value;           /* counter: the sum; gauge: the value */
  double sum, min, max;   /* timer */
  unsigned long long count; /* timer: samples */
} metric;

/* All of it is touched only on the main thread: by the DATA callback, which
 * the dispatcher runs there, and by the summary. */
static metric table[TABLE_SIZE];
static size_t nmetrics;
static unsigned long long datagrams, lines, bad_lines, dropped_lines;
static bool changed, terminated;

static int signal_pipe[2] = {-1, -1};

static void check(netev_status status, const char *what) {
  if (status == NETEV_OK) return;
  char msg[512];
  netev_last_error_message(msg, sizeof msg);
  fprintf(stderr, "statsd_sink: %s: %s: %s\n", what, netev_status_name(status), msg);
  exit(1);
}

static void on_signal(int sig) {
  int saved = errno;
  unsigned char byte = (unsigned char)sig;
  (void)!write(signal_pipe[1], &byte, 1);
  errno = saved;
}

static double now_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* FNV-1a over the name, mixed with the kind: a counter and a gauge may share
 * a name, as in StatsD. */
static size_t hash(const char *name, size_t len, kind k) {
  unsigned long long h = 0xcbf29ce484222325ull ^ (unsigned)k;
  for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)name[i]) * 0x100000001b3ull;
  return (size_t)(h % TABLE_SIZE);
}

/* The metric for (name, kind), created if new; NULL when the table is full. */
static metric *lookup(const char *name, size_t len, kind k) {
  for (size_t i = hash(name, len, k);; i = (i + 1) % TABLE_SIZE) {
    metric *m = &table[i];
    if (!m->name) {
      if (nmetrics == MAX_METRICS) return NULL;
      m->name = malloc(len + 1);
      if (!m->name) return NULL;
      memcpy(m->name, name, len);
      m->name[len] = '\0';
      m->kind = k;
      nmetrics++;
      return m;
    }
    if (m->kind == k && strlen(m->name) == len && memcmp(m->name, name, len) == 0) return m;
  }
}

static bool valid_name(const char *s, size_t len) {
  if (len == 0 || len > MAX_NAME) return false;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= ' ' || c >= 0x7f || c == ':' || c == '|' || c == '@') return false;
  }
  return true;
}

/* A finite decimal number, nothing else (strtod alone would also take
 * "inf", "nan", hex and leading blanks). */
static bool parse_number(const char *s, size_t len, double *out) {
  char buf[64];
  if (len == 0 || len >= sizeof buf) return false;
  for (size_t i = 0; i < len; i++)
    if (!strchr("0123456789.eE+-", s[i])) return false;
  memcpy(buf, s, len);
  buf[len] = '\0';
  char *end;
  errno = 0;
  double v = strtod(buf, &end);
  if (end != buf + len || errno == ERANGE || !isfinite(v)) return false;
  *out = v;
  return true;
}

/* Whether the field of `len` bytes at `p` is exactly the string `s`. */
static bool field_is(const char *p, size_t len, const char *s) { return strlen(s) == len && memcmp(p, s, len) == 0; }

typedef enum { LINE_OK, LINE_BAD, LINE_DROPPED } line_result;

/* One line, without its '\n'. */
static line_result parse_line(const char *s, size_t len) {
  const char *colon = memchr(s, ':', len);
  if (!colon || !valid_name(s, (size_t)(colon - s))) return LINE_BAD;
  const char *name = s;
  size_t name_len = (size_t)(colon - s);
  const char *rest = colon + 1, *end = s + len;

  /* value|type[|@rate][|#tags] */
  const char *fields[4];
  size_t field_len[4], nfields = 0;
  for (const char *p = rest;;) {
    const char *bar = memchr(p, '|', (size_t)(end - p));
    const char *stop = bar ? bar : end;
    if (nfields == 4) return LINE_BAD;
    fields[nfields] = p;
    field_len[nfields] = (size_t)(stop - p);
    nfields++;
    if (!bar) break;
    p = bar + 1;
  }
  if (nfields < 2) return LINE_BAD;
  kind k;
  if (field_is(fields[1], field_len[1], "c")) k = COUNTER;
  else if (field_is(fields[1], field_len[1], "g")) k = GAUGE;
  else if (field_is(fields[1], field_len[1], "ms")) k = TIMER;
  else return LINE_BAD;
  double rate = 1;
  bool have_rate = false, have_tags = false;
  for (size_t i = 2; i < nfields; i++) {
    if (field_len[i] > 1 && fields[i][0] == '@' && !have_rate && !have_tags) {
      if (!parse_number(fields[i] + 1, field_len[i] - 1, &rate) || !(rate > 0 && rate <= 1)) return LINE_BAD;
      have_rate = true;
    } else if (field_len[i] > 0 && fields[i][0] == '#' && !have_tags) {
      have_tags = true; /* DogStatsD tags: ignored */
    } else {
      return LINE_BAD;
    }
  }
  double v;
  if (!parse_number(fields[0], field_len[0], &v)) return LINE_BAD;
  bool signed_value = fields[0][0] == '+' || fields[0][0] == '-';
  if (k == TIMER && v < 0) return LINE_BAD;

  metric *m = lookup(name, name_len, k);
  if (!m) return LINE_DROPPED;
  switch (k) {
  case COUNTER:
    m->value += v / rate;
    break;
  case GAUGE:
    m->value = signed_value ? m->value + v : v;
    break;
  case TIMER:
    if (m->count == 0 || v < m->min) m->min = v;
    if (m->count == 0 || v > m->max) m->max = v;
    m->sum += v;
    m->count++;
    break;
  }
  return LINE_OK;
}

/* Shows a bad line, made printable: a sender's bytes are not ours to put on
 * a terminal as they are. */
static void show_bad(const char *s, size_t len, const char *from_ip, uint16_t from_port) {
  char shown[81];
  size_t n = 0;
  for (size_t i = 0; i < len && n < sizeof shown - 1; i++) {
    unsigned char c = (unsigned char)s[i];
    shown[n++] = c >= ' ' && c < 0x7f ? (char)c : '?';
  }
  shown[n] = '\0';
  printf("bad line from %s port %u: \"%s\"%s\n", from_ip, (unsigned)from_port, shown, len > n ? "..." : "");
}

/* DATA: one datagram, on the main thread (the dispatcher's). */
static void on_data(netev_udp_socket sock, const netev_event *e, void *user_data) {
  (void)sock;
  (void)user_data;
  datagrams++;
  changed = true;
  const char *p = (const char *)e->data, *end = p + e->data_len; /* data NULL: an empty datagram */
  while (p && p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *stop = nl ? nl : end;
    size_t len = (size_t)(stop - p);
    if (len > 0 && p[len - 1] == '\r') len--;
    if (len > 0) {
      lines++;
      switch (parse_line(p, len)) {
      case LINE_OK:
        break;
      case LINE_BAD:
        if (++bad_lines <= BAD_LINES_SHOWN) show_bad(p, len, e->ip, e->port);
        break;
      case LINE_DROPPED:
        dropped_lines++;
        break;
      }
    }
    p = nl ? nl + 1 : end;
  }
}

static void on_error(netev_udp_socket sock, const netev_event *e, void *user_data) {
  (void)sock;
  (void)user_data;
  printf("error: %s: %s\n", netev_status_name((int32_t)e->error), e->message);
}

static void on_terminate(netev_udp_socket sock, const netev_event *e, void *user_data) {
  (void)sock;
  (void)e;
  (void)user_data;
  terminated = true;
}

static int by_name(const void *a, const void *b) {
  const metric *x = *(metric *const *)a, *y = *(metric *const *)b;
  int c = strcmp(x->name, y->name);
  return c ? c : (int)x->kind - (int)y->kind;
}

static void summary(const char *what, double seconds) {
  printf("%s after %.1f s: %llu datagrams, %llu lines, %llu bad, %llu dropped, %zu metrics\n", what, seconds,
         datagrams, lines, bad_lines, dropped_lines, nmetrics);
  metric **sorted = malloc((nmetrics ? nmetrics : 1) * sizeof *sorted);
  if (!sorted) {
    fprintf(stderr, "statsd_sink: out of memory\n");
    exit(1);
  }
  size_t n = 0;
  for (size_t i = 0; i < TABLE_SIZE; i++)
    if (table[i].name) sorted[n++] = &table[i];
  qsort(sorted, n, sizeof *sorted, by_name);
  for (size_t i = 0; i < n; i++) {
    const metric *m = sorted[i];
    if (m->kind == TIMER) {
      printf("  timer %s count=%llu min=%.15g max=%.15g mean=%.15g sum=%.15g\n", m->name, m->count, m->min, m->max,
             m->sum / (double)m->count, m->sum);
    } else {
      printf("  %s %s %.15g\n", KIND_NAME[m->kind], m->name, m->value);
    }
  }
  free(sorted);
  changed = false;
}

static void usage(const char *argv0) {
  fprintf(stderr, "usage: %s [--interval SECONDS] [PORT]\n", argv0);
  exit(2);
}

int main(int argc, char **argv) {
  double interval = 10;
  long port = 0;
  bool have_port = false;
  for (int i = 1; i < argc; i++) {
    char *end;
    if (strcmp(argv[i], "--interval") == 0 && i + 1 < argc) {
      interval = strtod(argv[++i], &end);
      if (*end || !(interval >= 0.01 && interval <= 86400)) usage(argv[0]);
    } else if (!have_port) {
      port = strtol(argv[i], &end, 10);
      if (*argv[i] == '\0' || *end || port < 0 || port > 65535) usage(argv[0]);
      have_port = true;
    } else {
      usage(argv[0]);
    }
  }
  setvbuf(stdout, NULL, _IOLBF, 0);

  /* SIGINT and SIGTERM blocked before netev starts its threads, so only
   * main gets them, through the self-pipe (see echo_server.c). */
  if (pipe(signal_pipe) != 0) {
    perror("statsd_sink: pipe");
    return 1;
  }
  for (int i = 0; i < 2; i++) {
    int flags = fcntl(signal_pipe[i], F_GETFL);
    if (flags < 0 || fcntl(signal_pipe[i], F_SETFL, flags | O_NONBLOCK) != 0 ||
        fcntl(signal_pipe[i], F_SETFD, FD_CLOEXEC) != 0) {
      perror("statsd_sink: fcntl");
      return 1;
    }
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0 ||
      pthread_sigmask(SIG_BLOCK, &stop_signals, NULL) != 0) {
    perror("statsd_sink: signals");
    return 1;
  }

  /* The dispatcher queues the socket's callbacks until main runs them. */
  netev_dispatcher d;
  check(netev_dispatcher_create(&d), "dispatcher_create");
  int dfd;
  check(netev_dispatcher_fd(d, &dfd), "dispatcher_fd");

  netev_udp_options options;
  check(netev_udp_options_init(&options), "udp_options_init");
  options.on_data = on_data;
  options.on_error = on_error;
  options.on_terminate = on_terminate;
  options.dispatcher = d;
  netev_udp_socket sock;
  check(netev_udp_open((uint16_t)port, &options, &sock), "udp_open");
  uint16_t real_port;
  check(netev_udp_port(sock, &real_port), "udp_port");
  printf("listening on port %u\n", (unsigned)real_port);

  if (pthread_sigmask(SIG_UNBLOCK, &stop_signals, NULL) != 0) {
    perror("statsd_sink: pthread_sigmask");
    return 1;
  }

  double start = now_seconds(), next = start + interval;
  unsigned char sig = 0;
  for (;;) {
    double left = next - now_seconds();
    int timeout = left > 0 ? (int)(left * 1000) + 1 : 0;
    struct pollfd p[2] = {{.fd = signal_pipe[0], .events = POLLIN}, {.fd = dfd, .events = POLLIN}};
    if (poll(p, 2, timeout) < 0 && errno != EINTR) {
      perror("statsd_sink: poll");
      return 1;
    }
    if (p[0].revents && read(signal_pipe[0], &sig, 1) == 1) break;
    /* Runs what is queued now (each datagram waiting gets its DATA). */
    if (p[1].revents) check(netev_dispatcher_run(d, 0, NULL), "dispatcher_run");
    double t = now_seconds();
    if (t >= next) {
      if (changed) summary("summary", t - start);
      while (next <= t) next += interval;
    }
  }
  printf("%s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");

  /* Close the socket (the kernel drops what it still holds for it), then
   * run what the dispatcher queued before that: every datagram netev read
   * is counted, and TERMINATE comes last. */
  check(netev_udp_close(sock), "udp_close");
  double give_up = now_seconds() + 5;
  while (!terminated && now_seconds() < give_up) check(netev_dispatcher_run(d, 0.1, NULL), "dispatcher_run");
  if (!terminated) fprintf(stderr, "statsd_sink: no TERMINATE within 5 s\n");
  check(netev_udp_release(sock), "udp_release");
  check(netev_dispatcher_release(d), "dispatcher_release");
  check(netev_runtime_shutdown(5), "runtime_shutdown");

  summary("final summary", now_seconds() - start);
  for (size_t i = 0; i < TABLE_SIZE; i++) free(table[i].name);
  return terminated ? 0 : 1;
}
