/* Helpers for the TLS tests: the certificates tests/c/tls_certs.sh made
 * (NETEV_TLS_DIR, set by the harness), TLS configs, a TLS echo listener
 * on netev, child processes (openssl s_server / s_client) with piped
 * stdin and stdout, and waiting for a port to listen. Every wait is
 * bounded. */
#ifndef NETEV_TEST_COMMON_TLS_H
#define NETEV_TEST_COMMON_TLS_H

#include "common_a.h"

#include <fcntl.h>
#include <sys/wait.h>

/* The path of `name` in the certificates' directory (a static buffer per
 * call site's slot: up to 8 paths live at once). */
static inline const char *tls_path(const char *name) {
  static char bufs[8][512];
  static int next;
  const char *dir = getenv("NETEV_TLS_DIR");
  if (!dir) FAIL("NETEV_TLS_DIR is not set (the harness makes the certificates)");
  char *b = bufs[next++ % 8];
  snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
  return b;
}

/* The whole file, NUL-terminated (the caller frees it). */
static inline char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) FAIL("cannot open %s", path);
  char *b = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n + 4097 > cap) {
      cap = cap ? cap * 2 : 8192;
      b = realloc(b, cap);
      CHECK(b != NULL);
    }
    size_t k = fread(b + n, 1, 4096, f);
    n += k;
    if (k == 0) break;
  }
  fclose(f);
  b[n] = 0;
  if (len) *len = n;
  return b;
}

/* A client config trusting the test CA (`ca` a file name in the dir, or
 * NULL for none given), with optional ALPN and client certificate. */
static inline netev_tls_config tls_client(const char *ca, const char *alpn, const char *cert,
                                          const char *key) {
  netev_tls_options o;
  CHECK_OK(netev_tls_options_init(&o));
  if (ca) o.ca_file = tls_path(ca);
  o.alpn = alpn;
  if (cert) o.cert_file = tls_path(cert);
  if (key) o.key_file = tls_path(key);
  netev_tls_config c = 0;
  CHECK_OK(netev_tls_client_config_create(&o, &c));
  CHECK(c != 0);
  return c;
}

/* A server config with `cert`/`key` (file names in the dir); with
 * `client_ca`, client certificates are required and checked against it. */
static inline netev_tls_config tls_server(const char *cert, const char *key, const char *alpn,
                                          const char *client_ca) {
  netev_tls_options o;
  CHECK_OK(netev_tls_options_init(&o));
  o.cert_file = tls_path(cert);
  o.key_file = tls_path(key);
  o.alpn = alpn;
  if (client_ca) {
    o.ca_file = tls_path(client_ca);
    o.require_client_cert = true;
  }
  netev_tls_config c = 0;
  CHECK_OK(netev_tls_server_config_create(&o, &c));
  CHECK(c != 0);
  return c;
}

/* Frees an xrec once its user_data_free ran (it runs after TERMINATE
 * returned, on netev's thread). */
static inline void xrec_done(xrec *x) {
  CHECK(xrec_wait_freed(x, 10));
  xrec_free_fields(x);
}

/* A connection string property into a static buffer. */
typedef netev_status (*tls_string_getter)(netev_connection, char *, size_t, size_t *);
static inline const char *tls_prop(netev_connection c, tls_string_getter get) {
  static char buf[4][256];
  static int next;
  char *b = buf[next++ % 4];
  size_t needed = 0;
  CHECK_OK(get(c, b, sizeof buf[0], &needed));
  CHECK(needed == strlen(b));
  return b;
}

/* The first error-list entry of `c` (which must have one). */
static inline netev_error_info first_error(netev_connection c) {
  size_t n = 0;
  CHECK_OK(netev_connection_error_count(c, &n));
  CHECK(n >= 1);
  netev_error_info info;
  CHECK_OK(netev_connection_error_at(c, 0, &info));
  return info;
}

/* ---- a TLS echo server on netev ----------------------------------------- */

struct tls_srv;
static struct tls_srv *tls_srv_table[4];
static inline void tls_srv_register(struct tls_srv *s) {
  for (int i = 0; i < 4; i++)
    if (!tls_srv_table[i] || tls_srv_table[i] == s) {
      tls_srv_table[i] = s;
      return;
    }
  FAIL("more than 4 TLS servers at once");
}

/* Each accepted connection echoes what it receives (or, with `sink`, only
 * counts it) and records its events in its own xrec. */
#define TLS_SRV_MAX 16
typedef struct tls_srv {
  pthread_mutex_t mu;
  netev_listener l;
  uint16_t port;
  int sink;
  int n;
  xrec conns[TLS_SRV_MAX];
  netev_connection ids[TLS_SRV_MAX];
  char sni[TLS_SRV_MAX][128];
  char alpn[TLS_SRV_MAX][64];
  char version[TLS_SRV_MAX][32];
  size_t peer_cert_len[TLS_SRV_MAX];
} tls_srv;

/* The server an xrec belongs to (a table of the live servers). */
static tls_srv *tls_srv_of_xrec(xrec *x) {
  for (int i = 0; i < 4; i++) {
    tls_srv *s = tls_srv_table[i];
    if (s && x >= s->conns && x < s->conns + TLS_SRV_MAX) return s;
  }
  FAIL("an xrec of no TLS server");
}

static inline void tls_srv_conn_cb(netev_connection c, const netev_event *e, void *ud) {
  xrec *x = ud;
  tls_srv *s = tls_srv_of_xrec(x);
  int i = (int)(x - s->conns);
  if (e->type == NETEV_EVENT_CONNECTION) {
    size_t need = 0;
    CHECK_OK(netev_connection_server_name(c, s->sni[i], sizeof s->sni[i], &need));
    CHECK_OK(netev_connection_alpn(c, s->alpn[i], sizeof s->alpn[i], &need));
    CHECK_OK(netev_connection_tls_version(c, s->version[i], sizeof s->version[i], &need));
    CHECK_OK(netev_connection_peer_certificate(c, NULL, 0, &s->peer_cert_len[i]));
  }
  if (e->type == NETEV_EVENT_DATA && !s->sink) {
    netev_status st = netev_connection_send(c, e->data, e->data_len);
    if (st != NETEV_OK) FAIL("echo send: %s", netev_status_name(st));
  }
  xrec_callback(c, e, ud);
}

static inline bool tls_srv_accept(netev_listener l, const netev_event *e, void *ud,
                                  netev_connection_options *o) {
  (void)l;
  tls_srv *s = ud;
  pthread_mutex_lock(&s->mu);
  int i = s->n < TLS_SRV_MAX ? s->n++ : -1;
  pthread_mutex_unlock(&s->mu);
  if (i < 0) return false;
  xrec *x = &s->conns[i];
  s->ids[i] = e->connection;
  o->on_connection = o->on_data = o->on_shutdown = o->on_error = tls_srv_conn_cb;
  o->on_terminate = o->on_drain = o->on_end = tls_srv_conn_cb;
  o->user_data = x;
  o->user_data_free = xrec_user_data_free;
  return true;
}

/* Starts a TLS listener on 127.0.0.1 (port 0) with server config `cfg`. */
static inline void tls_srv_start(tls_srv *s, netev_tls_config cfg, int sink) {
  memset(s, 0, sizeof *s);
  pthread_mutex_init(&s->mu, NULL);
  s->sink = sink;
  for (int i = 0; i < TLS_SRV_MAX; i++) xrec_init(&s->conns[i]);
  tls_srv_register(s);
  netev_connection_options d;
  CHECK_OK(netev_connection_options_init(&d));
  d.tls = cfg;
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.bind_address = "127.0.0.1";
  lo.on_connection = tls_srv_accept;
  lo.user_data = s;
  lo.connection_defaults = &d;
  CHECK_OK(netev_listener_open(0, &lo, &s->l));
  CHECK_OK(netev_listener_port(s->l, &s->port));
}

static inline int tls_srv_count(tls_srv *s) {
  pthread_mutex_lock(&s->mu);
  int n = s->n;
  pthread_mutex_unlock(&s->mu);
  return n;
}

/* Waits (bounded) for accepted connection `i` to reach TERMINATE. */
static inline xrec *tls_srv_wait_conn(tls_srv *s, int i, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  while (tls_srv_count(s) <= i) {
    if (now_seconds() > end) FAIL("no connection %d accepted", i);
    usleep(2000);
  }
  xrec *x = &s->conns[i];
  REC_WAIT_TERMINATED_OR_FAIL(&x->r, seconds);
  return x;
}

static inline void tls_srv_stop(tls_srv *s) {
  CHECK_OK(netev_listener_release(s->l));
}

/* Frees the server once every connection it accepted has ended (their
 * callbacks use its memory). */
static inline void tls_srv_free(tls_srv *s) {
  for (int i = 0; i < tls_srv_count(s); i++) {
    REC_WAIT_TERMINATED_OR_FAIL(&s->conns[i].r, 10);
    CHECK(xrec_wait_freed(&s->conns[i], 10)); /* user_data_free runs after TERMINATE */
  }
  for (int i = 0; i < 4; i++)
    if (tls_srv_table[i] == s) tls_srv_table[i] = NULL;
  for (int i = 0; i < TLS_SRV_MAX; i++) xrec_free_fields(&s->conns[i]);
  pthread_mutex_destroy(&s->mu);
}

/* ---- child processes ---------------------------------------------------- */

typedef struct child {
  pid_t pid;
  int in_fd;  /* its stdin (we write), -1 once closed */
  int out_fd; /* its stdout (we read) */
  pthread_t reader;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  unsigned char *out;
  size_t out_len, out_cap;
  int eof;
} child;

static void *child_reader(void *arg) {
  child *c = arg;
  unsigned char buf[65536];
  for (;;) {
    ssize_t n = read(c->out_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    pthread_mutex_lock(&c->mu);
    if (c->out_len + (size_t)n > c->out_cap) {
      size_t cap = c->out_cap ? c->out_cap : 65536;
      while (cap < c->out_len + (size_t)n) cap *= 2;
      c->out = realloc(c->out, cap);
      if (!c->out) FAIL("out of memory");
      c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, buf, (size_t)n);
    c->out_len += (size_t)n;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
  }
  pthread_mutex_lock(&c->mu);
  c->eof = 1;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

/* Runs argv[0] (found on PATH) with piped stdin and stdout; stderr goes to
 * /dev/null unless NETEV_TEST_VERBOSE is set. */
static inline void child_start(child *c, char *const argv[]) {
  memset(c, 0, sizeof *c);
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  int in[2], out[2];
  CHECK(pipe2(in, O_CLOEXEC) == 0 && pipe2(out, O_CLOEXEC) == 0);
  c->pid = fork();
  CHECK(c->pid >= 0);
  if (c->pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    if (!env_flag("NETEV_TEST_VERBOSE")) {
      int null = open("/dev/null", O_WRONLY);
      if (null >= 0) dup2(null, 2);
    }
    execvp(argv[0], argv);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  c->in_fd = in[1];
  c->out_fd = out[0];
  CHECK(pthread_create(&c->reader, NULL, child_reader, c) == 0);
}

/* Writes all of `b` to the child's stdin (blocking; the child reads it). */
static inline void child_write(child *c, const unsigned char *b, size_t n) {
  while (n > 0) {
    ssize_t w = write(c->in_fd, b, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) FAIL("writing to the child: %s", strerror(errno));
    b += w;
    n -= (size_t)w;
  }
}

static inline void child_close_stdin(child *c) {
  if (c->in_fd >= 0) close(c->in_fd);
  c->in_fd = -1;
}

/* Waits until the child printed at least `n` bytes (or EOF, or time). */
static inline size_t child_wait_output(child *c, size_t n, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&c->mu);
  while (c->out_len < n && !c->eof && cond_wait_until(&c->cv, &c->mu, end)) {
  }
  size_t got = c->out_len;
  pthread_mutex_unlock(&c->mu);
  return got;
}

/* Waits until the child closed its stdout (bounded); returns whether it did. */
static inline int child_wait_eof(child *c, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  pthread_mutex_lock(&c->mu);
  while (!c->eof && cond_wait_until(&c->cv, &c->mu, end)) {
  }
  int eof = c->eof;
  pthread_mutex_unlock(&c->mu);
  return eof;
}

/* Ends the child (SIGKILL if it still runs), reaps it, frees. Returns its
 * wait status. */
static inline int child_stop(child *c, int sig) {
  /* the signal first: s_server ends its session cleanly at EOF on stdin */
  if (sig) kill(c->pid, sig);
  child_close_stdin(c);
  int status = 0;
  double end = now_seconds() + 10 * test_time_factor();
  while (waitpid(c->pid, &status, WNOHANG) == 0) {
    if (now_seconds() > end) {
      kill(c->pid, SIGKILL);
      waitpid(c->pid, &status, 0);
      break;
    }
    usleep(5000);
  }
  pthread_join(c->reader, NULL);
  close(c->out_fd);
  free(c->out);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
  return status;
}

/* A port that was free a moment ago: common_a.h's refused_port (bound to
 * 0, read, closed), for a server that is told which port to take. */
static inline uint16_t free_port(void) { return refused_port(); }

/* Whether some socket listens on `port` (from /proc/net/tcp and tcp6),
 * without connecting to it (a probe would use up a one-shot server). */
static inline int port_listening(uint16_t port) {
  const char *files[] = {"/proc/net/tcp", "/proc/net/tcp6"};
  for (int f = 0; f < 2; f++) {
    FILE *fp = fopen(files[f], "r");
    if (!fp) continue;
    char line[512];
    while (fgets(line, sizeof line, fp)) {
      char local[128];
      unsigned st = 0;
      if (sscanf(line, " %*d: %127s %*s %x", local, &st) != 2) continue;
      char *colon = strrchr(local, ':');
      if (colon && strtoul(colon + 1, NULL, 16) == port && st == 0x0A) {
        fclose(fp);
        return 1;
      }
    }
    fclose(fp);
  }
  return 0;
}

static inline void wait_listening(uint16_t port, double seconds) {
  double end = now_seconds() + seconds * test_time_factor();
  while (!port_listening(port)) {
    if (now_seconds() > end) FAIL("nothing listens on port %u", port);
    usleep(5000);
  }
}

#endif
