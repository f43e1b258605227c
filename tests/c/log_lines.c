/* The lifecycle log: netev_log_open and netev_log_set_callback both get a
 * line per lifecycle step of a connection (open, connected, sent, received,
 * shutdown, close, terminate; error for a failed one), with its handle;
 * removing the callback and closing the file stop them; NETEV_LOG_FILE
 * opens a log when the runtime starts. Last, every line is checked against
 * the format API.md fixes:
 *   <UTC timestamp, microseconds> <kind> <id> <what>. */
#include "common_a.h"

#include <ctype.h>
#include <sys/stat.h>

/* ---- lines from the callback -------------------------------------------- */

typedef struct store {
  pthread_mutex_t mu;
  char **lines;
  size_t n, cap;
  int bad_newline;
} store;

static void on_log(const char *line, void *ud) {
  store *s = ud;
  pthread_mutex_lock(&s->mu);
  if (strchr(line, '\n')) s->bad_newline++;
  if (s->n == s->cap) {
    s->cap = s->cap ? s->cap * 2 : 64;
    s->lines = realloc(s->lines, s->cap * sizeof *s->lines);
    if (!s->lines) FAIL("out of memory");
  }
  s->lines[s->n] = strdup(line);
  if (!s->lines[s->n]) FAIL("out of memory");
  s->n++;
  pthread_mutex_unlock(&s->mu);
}

static size_t store_count(store *s) {
  pthread_mutex_lock(&s->mu);
  size_t n = s->n;
  pthread_mutex_unlock(&s->mu);
  return n;
}

/* ---- lines from a file -------------------------------------------------- */

typedef struct lines {
  char **v;
  size_t n;
  char *buf;
} lines;

static void read_lines(const char *path, lines *out) {
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "rb");
  if (!f) FAIL("cannot open %s: %s", path, strerror(errno));
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap + 1);
  CHECK(buf != NULL);
  size_t r;
  while ((r = fread(buf + len, 1, cap - len, f)) > 0) {
    len += r;
    if (len == cap) {
      cap *= 2;
      buf = realloc(buf, cap + 1);
      CHECK(buf != NULL);
    }
  }
  fclose(f);
  buf[len] = 0;
  if (len > 0 && buf[len - 1] != '\n') FAIL("%s does not end with a newline", path);
  size_t count = 0;
  for (size_t i = 0; i < len; i++) count += buf[i] == '\n';
  out->v = calloc(count + 1, sizeof *out->v);
  CHECK(out->v != NULL);
  char *p = buf;
  for (size_t i = 0; i < count; i++) {
    char *nl = strchr(p, '\n');
    *nl = 0;
    out->v[out->n++] = p;
    p = nl + 1;
  }
  out->buf = buf;
}

static void free_lines(lines *l) {
  free(l->v);
  free(l->buf);
}

static long file_size(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) return -1;
  return (long)st.st_size;
}

/* ---- matching ----------------------------------------------------------- */

/* The part after "<kind> <id> " when `line` is about connection `id`. */
static const char *what_of(const char *line, netev_connection id) {
  char tag[64];
  snprintf(tag, sizeof tag, " connection %llu ", (unsigned long long)id);
  const char *p = strstr(line, tag);
  return p ? p + strlen(tag) : NULL;
}

static int has_word(char **v, size_t n, netev_connection id, const char *word) {
  for (size_t i = 0; i < n; i++) {
    const char *w = what_of(v[i], id);
    if (w && strstr(w, word)) return 1;
  }
  return 0;
}

static void dump(const char *title, char **v, size_t n) {
  fprintf(stderr, "%s (%zu lines):\n", title, n);
  for (size_t i = 0; i < n; i++) fprintf(stderr, "  %s\n", v[i]);
}

/* Every word has a line about `id` among `v`. */
static void check_words(const char *title, char **v, size_t n, netev_connection id,
                        const char *const *words) {
  for (size_t k = 0; words[k]; k++) {
    if (!has_word(v, n, id, words[k])) {
      dump(title, v, n);
      FAIL("%s: no line about connection %llu containing \"%s\"", title,
           (unsigned long long)id, words[k]);
    }
  }
}

/* ---- the format of API.md ----------------------------------------------- */

static char violations[4096];
static size_t nviolations = 0;

static void violation(const char *line, const char *why) {
  nviolations++;
  size_t used = strlen(violations);
  /* keep the first of each reason only */
  if (strstr(violations, why)) return;
  snprintf(violations + used, sizeof violations - used, "  %s, e.g. \"%s\"\n", why, line);
}

static int digits(const char *p, int n) {
  for (int i = 0; i < n; i++)
    if (!isdigit((unsigned char)p[i])) return 0;
  return 1;
}

static void check_format(const char *line) {
  /* 2026-11-25T15:00:00.123456Z */
  const char *p = line;
  if (!(digits(p, 4) && p[4] == '-' && digits(p + 5, 2) && p[7] == '-' && digits(p + 8, 2) &&
        p[10] == 'T' && digits(p + 11, 2) && p[13] == ':' && digits(p + 14, 2) &&
        p[16] == ':' && digits(p + 17, 2) && p[19] == '.')) {
    violation(line, "timestamp is not YYYY-MM-DDTHH:MM:SS.");
    return;
  }
  int frac = 0;
  while (isdigit((unsigned char)p[20 + frac])) frac++;
  if (frac != 6 || p[20 + frac] != 'Z' || p[21 + frac] != ' ') {
    violation(line, "timestamp has not exactly 6 fraction digits (microseconds) then Z");
    if (p[20 + frac] != 'Z' || p[21 + frac] != ' ') return;
  }
  p += 22 + frac;
  const char *kinds[] = {"connection ", "listener ", "runtime "};
  size_t k;
  for (k = 0; k < 3; k++)
    if (strncmp(p, kinds[k], strlen(kinds[k])) == 0) break;
  if (k == 3) {
    violation(line, "kind is not connection, listener or runtime");
    return;
  }
  p += strlen(kinds[k]);
  if (!isdigit((unsigned char)*p)) {
    violation(line, "no id after the kind");
    return;
  }
  while (isdigit((unsigned char)*p)) p++;
  if (*p != ' ') {
    violation(line, "no space after the id");
    return;
  }
  p++;
  if (k == 2) {
    if (strncmp(p, "open", 4) != 0 && strncmp(p, "shutdown", 8) != 0)
      violation(line, "runtime line does not begin with open or shutdown");
    return;
  }
  static const char *const starts[] = {"open",   "connected", "sent ",      "received ",
                                       "shutdown", "end",     "closed",     "error ",
                                       "terminated", "listening", "accepted", "rejected",
                                       NULL};
  int ok = 0;
  for (int i = 0; starts[i]; i++)
    if (strncmp(p, starts[i], strlen(starts[i])) == 0) ok = 1;
  if (strncmp(p, "end", 3) == 0 && isalpha((unsigned char)p[3])) ok = 0;
  if (!ok) {
    char why[160];
    char word[40];
    snprintf(word, sizeof word, "%.39s", p);
    char *sp = strchr(word, ' ');
    if (sp) *sp = 0;
    snprintf(why, sizeof why,
             "what begins with \"%s\", not one of open connected sent received shutdown "
             "end closed error terminated ...",
             word);
    violation(line, why);
    return;
  }
  unsigned long long bytes;
  char tail[16];
  if (strncmp(p, "sent ", 5) == 0 || strncmp(p, "received ", 9) == 0) {
    const char *q = strchr(p, ' ') + 1;
    if (sscanf(q, "%llu %15s", &bytes, tail) != 2 || strcmp(tail, "bytes") != 0)
      violation(line, "not \"sent N bytes\" / \"received N bytes\"");
  }
  if (strncmp(p, "error ", 6) == 0 && (strncmp(p + 6, "NETEV_", 6) != 0 || !strstr(p, ": ")))
    violation(line, "not \"error <STATUS_NAME>: <message>\"");
}

/* ---- connections -------------------------------------------------------- */

/* An echo round trip: open, send, receive, shutdown, close, terminate. */
static netev_connection echo_lifecycle(void) {
  peer p;
  peer_start(&p, PEER_ECHO, 0);
  xrec x;
  xrec_init(&x);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", p.port, &o, &c));
  CHECK_OK(netev_connection_send(c, "hello", 5));
  CHECK(rec_wait_bytes(&x.r, 5, 10));
  CHECK_OK(netev_connection_shutdown(c));
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
  CHECK_SEQUENCE(&x.r, "connection data* end close terminate");
  /* user_data_free runs after the terminate line is logged */
  CHECK(xrec_wait_freed(&x, 10));
  CHECK_OK(netev_connection_release(c));
  peer_stop(&p);
  xrec_free_fields(&x);
  return c;
}

/* A refused connect: open, error, terminate. */
static netev_connection refused_lifecycle(void) {
  xrec x;
  xrec_init(&x);
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  xrec_set_all(&o, &x);
  netev_connection c = 0;
  CHECK_OK(netev_connection_open("127.0.0.1", refused_port(), &o, &c));
  REC_WAIT_TERMINATED_OR_FAIL(&x.r, 10);
  CHECK_SEQUENCE(&x.r, "error terminate");
  CHECK(xrec_wait_freed(&x, 10));
  CHECK_OK(netev_connection_release(c));
  xrec_free_fields(&x);
  return c;
}

static const char *const lifecycle_words[] = {"open",     "connected", "sent",      "received",
                                              "shutdown", "close",     "terminate", NULL};
static const char *const error_words[] = {"open", "error", "NETEV_ERR_CONNECTION_REFUSED",
                                          "terminate", NULL};

int main(void) {
  watchdog(60);
  char path[128], env_path[128];
  snprintf(path, sizeof path, "/tmp/netev_log_lines_%ld.log", (long)getpid());
  snprintf(env_path, sizeof env_path, "/tmp/netev_log_lines_env_%ld.log", (long)getpid());
  unlink(path);
  unlink(env_path);
  store s;
  memset(&s, 0, sizeof s);
  pthread_mutex_init(&s.mu, NULL);

  CHECK_OK(netev_log_open(path));
  CHECK(file_size(path) == 0);
  CHECK_OK(netev_log_set_callback(on_log, &s));

  /* a full lifecycle, in the file and through the callback */
  netev_connection c1 = echo_lifecycle();
  pthread_mutex_lock(&s.mu);
  check_words("callback", s.lines, s.n, c1, lifecycle_words);
  CHECK(s.bad_newline == 0);
  pthread_mutex_unlock(&s.mu);
  lines f;
  read_lines(path, &f);
  check_words(path, f.v, f.n, c1, lifecycle_words);
  /* the callback got the same lines as the file */
  pthread_mutex_lock(&s.mu);
  for (size_t i = 0; i < s.n; i++) {
    size_t j = 0;
    while (j < f.n && strcmp(f.v[j], s.lines[i]) != 0) j++;
    if (j == f.n) {
      dump(path, f.v, f.n);
      FAIL("callback line not in the file: %s", s.lines[i]);
    }
  }
  pthread_mutex_unlock(&s.mu);
  free_lines(&f);

  /* a failed connect logs its error */
  netev_connection c2 = refused_lifecycle();
  pthread_mutex_lock(&s.mu);
  check_words("callback", s.lines, s.n, c2, error_words);
  pthread_mutex_unlock(&s.mu);
  read_lines(path, &f);
  check_words(path, f.v, f.n, c2, error_words);
  free_lines(&f);

  /* no callback any more: the file still gets lines, the callback none */
  CHECK_OK(netev_log_set_callback(NULL, NULL));
  size_t before = store_count(&s);
  netev_connection c3 = refused_lifecycle();
  CHECK(store_count(&s) == before);
  read_lines(path, &f);
  check_words(path, f.v, f.n, c3, error_words);
  free_lines(&f);

  /* the file closed: nothing more is written to it */
  CHECK_OK(netev_log_close());
  CHECK_OK(netev_log_close()); /* closing again is harmless */
  long size = file_size(path);
  CHECK(size > 0);
  netev_connection c4 = echo_lifecycle();
  netev_connection c5 = refused_lifecycle();
  CHECK(file_size(path) == size);
  CHECK(store_count(&s) == before);

  /* every line so far, against the format of API.md */
  read_lines(path, &f);
  CHECK(!has_word(f.v, f.n, c4, "open") && !has_word(f.v, f.n, c5, "open"));
  for (size_t i = 0; i < f.n; i++) check_format(f.v[i]);
  free_lines(&f);
  for (size_t i = 0; i < s.n; i++) check_format(s.lines[i]);

  /* NETEV_LOG_FILE opens a log when the runtime starts afresh */
  CHECK_OK(netev_runtime_shutdown(10));
  CHECK(setenv("NETEV_LOG_FILE", env_path, 1) == 0);
  netev_connection c6 = echo_lifecycle();
  netev_connection c7 = refused_lifecycle();
  read_lines(env_path, &f);
  check_words(env_path, f.v, f.n, c6, lifecycle_words);
  check_words(env_path, f.v, f.n, c7, error_words);
  for (size_t i = 0; i < f.n; i++) check_format(f.v[i]);
  free_lines(&f);
  CHECK(file_size(path) == size); /* the closed log stays closed */
  /* shutdown closes the NETEV_LOG_FILE log; unset, the next start opens none */
  CHECK_OK(netev_runtime_shutdown(10));
  CHECK(unsetenv("NETEV_LOG_FILE") == 0);
  long env_size = file_size(env_path);
  CHECK(env_size > 0);
  (void)refused_lifecycle();
  CHECK(file_size(env_path) == env_size);
  CHECK_OK(netev_runtime_shutdown(10));

  CHECK(unlink(path) == 0);
  CHECK(unlink(env_path) == 0);
  for (size_t i = 0; i < s.n; i++) free(s.lines[i]);
  free(s.lines);
  pthread_mutex_destroy(&s.mu);

  if (nviolations > 0)
    FAIL("%zu log lines break the format of API.md (\"<UTC timestamp, microseconds> "
         "<kind> <id> <what>\", what beginning with open, connected, sent N bytes, "
         "received N bytes, shutdown, end, closed, error <STATUS_NAME>: <message>, "
         "terminated ...):\n%s",
         nviolations, violations);
  return 0;
}
