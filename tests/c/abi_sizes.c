/* The `size` rules of options structs (the header's "Versions"), for the
 * connection, listener and runtime options alike:
 *
 * 1. init_sized: NULL gives NETEV_ERR_NULL_ARGUMENT (the macro too); a size
 *    below the struct's first version (0, 1, 4, first - 1), above
 *    NETEV_OPTIONS_SIZE_MAX, or one that only a cut to 32 bits would bring
 *    into range gives NETEV_ERR_INVALID_ARGUMENT and writes nothing; the
 *    first version's size, this header's sizeof, sizeof + 40 and
 *    NETEV_OPTIONS_SIZE_MAX write exactly that many bytes (size, then
 *    zeros: every default is zero) and no byte past them.
 * 2. Readers (connection_open, listener_open, its connection_defaults,
 *    runtime_init): a size below the first version, above the maximum
 *    (the struct at a PROT_NONE guard: nothing past it is read), or
 *    UINT32_MAX gives NETEV_ERR_INVALID_ARGUMENT; a larger size whose extra
 *    bytes are zero (40 more, NETEV_OPTIONS_SIZE_MAX) is taken; one
 *    non-zero byte past the library's struct (the last of the largest size;
 *    built against the current header, also the first and the last of 40
 *    more) gives NETEV_ERR_INVALID_ARGUMENT naming it as a field this
 *    library does not know; a bool field holding 2 gives
 *    NETEV_ERR_INVALID_ARGUMENT naming the field; the first version's size
 *    with garbage in the bytes after it is taken (bytes past `size` are
 *    never read: fields there take their defaults).
 * 3. NETEV_OPTIONS_HAS says which fields a size covers.
 * 4. The options a listener's on_connection receives are the library's:
 *    `size` at least this header's sizeof, every field present. A callback
 *    that resets them as a newer header would (init_sized with 64 more
 *    bytes) and accepts gets a working connection (an echo). One that
 *    grows `size` by 16 and sets a byte there (a field this library does
 *    not know) and accepts: the client's socket is closed, the listener
 *    gets an ERROR NETEV_ERR_INVALID_ARGUMENT naming the unknown field,
 *    and the options' user_data_free runs once.
 *
 * tests/c_programs.rs also builds it against the header as released
 * (defining NETEV_TEST_RELEASED_HEADER), whose structs may be smaller than
 * the library's: nothing here then assumes this header's sizes are the
 * library's. */
#include "common_listener.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#define FILL 0xa5
#define ROOM (NETEV_OPTIONS_SIZE_MAX + 64)

/* Where each struct's first version (netev 0.2) ends: the end of its last
 * field then, which never moves. */
#define FIRST_CONNECTION (offsetof(netev_connection_options, dispatcher) + sizeof(netev_dispatcher))
#define FIRST_LISTENER (offsetof(netev_listener_options, dispatcher) + sizeof(netev_dispatcher))
#define FIRST_RUNTIME (offsetof(netev_runtime_options, worker_threads) + sizeof(uint32_t))

/* An aligned buffer with room for any version of any options struct. */
typedef union room {
  max_align_t align;
  unsigned char bytes[ROOM];
} room;

typedef netev_status (*init_fn)(void *options, size_t size);
static netev_status init_connection(void *o, size_t n) {
  return netev_connection_options_init_sized(o, n);
}
static netev_status init_listener(void *o, size_t n) {
  return netev_listener_options_init_sized(o, n);
}
static netev_status init_runtime(void *o, size_t n) { return netev_runtime_options_init_sized(o, n); }

static void set_size(room *r, uint64_t size) {
  uint32_t s = (uint32_t)size;
  memcpy(r->bytes, &s, sizeof s);
}

/* The last error message contains `want`. */
static void check_message(const char *want, const char *what) {
  char msg[512];
  netev_last_error_message(msg, sizeof msg);
  if (!strstr(msg, want)) FAIL("%s: message \"%s\" does not say \"%s\"", what, msg, want);
}

/* ---- 1. init_sized ------------------------------------------------------ */

static void check_init(const char *name, init_fn init, size_t header_size, size_t first) {
  CHECK_STATUS(init(NULL, header_size), NETEV_ERR_NULL_ARGUMENT);
  room r;
  const size_t bad[] = {0,
                        1,
                        4,
                        first - 1,
                        NETEV_OPTIONS_SIZE_MAX + 1,
                        SIZE_MAX,
                        (size_t)UINT32_MAX + 1 + first};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    if (bad[i] == (size_t)UINT32_MAX + 1 + first && sizeof(size_t) <= 4) continue;
    memset(r.bytes, FILL, sizeof r.bytes);
    netev_status st = init(r.bytes, bad[i]);
    if (st != NETEV_ERR_INVALID_ARGUMENT)
      FAIL("%s_init_sized(size %zu) gave %s, expected NETEV_ERR_INVALID_ARGUMENT", name, bad[i],
           netev_status_name((int32_t)st));
    for (size_t k = 0; k < sizeof r.bytes; k++)
      if (r.bytes[k] != FILL) FAIL("%s_init_sized(size %zu) wrote byte %zu", name, bad[i], k);
  }
  const size_t good[] = {first, header_size, header_size + 40, NETEV_OPTIONS_SIZE_MAX};
  for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
    memset(r.bytes, FILL, sizeof r.bytes);
    CHECK_OK(init(r.bytes, good[i]));
    uint32_t size;
    memcpy(&size, r.bytes, sizeof size);
    if (size != good[i]) FAIL("%s_init_sized(size %zu) set size %u", name, good[i], size);
    for (size_t k = sizeof size; k < good[i]; k++)
      if (r.bytes[k] != 0)
        FAIL("%s_init_sized(size %zu): byte %zu is %u, not 0", name, good[i], k, r.bytes[k]);
    for (size_t k = good[i]; k < sizeof r.bytes; k++)
      if (r.bytes[k] != FILL) FAIL("%s_init_sized(size %zu) wrote byte %zu", name, good[i], k);
  }
}

/* ---- 2. readers --------------------------------------------------------- */

typedef netev_status (*read_fn)(const void *options);

static netev_status open_connection(const void *o) {
  netev_connection c = 0;
  netev_status st = netev_connection_open("127.0.0.1", 9, o, &c);
  if (st == NETEV_OK) CHECK_OK(netev_connection_release(c)); /* no callbacks set */
  return st;
}

static netev_status open_listener(const void *o) {
  netev_listener l = 0;
  netev_status st = netev_listener_open(0, o, &l);
  if (st == NETEV_OK) CHECK_OK(netev_listener_release(l));
  return st;
}

/* A listener whose connection_defaults are `o`. */
static netev_status open_listener_defaults(const void *o) {
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.bind_address = "127.0.0.1";
  lo.connection_defaults = o;
  return open_listener(&lo);
}

static netev_status init_runtime_with(const void *o) {
  netev_status st = netev_runtime_init(o);
  if (st == NETEV_OK) CHECK_OK(netev_runtime_shutdown(10));
  return st;
}

static void expect(netev_status got, netev_status want, const char *name, const char *what) {
  if (got != want)
    FAIL("%s with %s gave %s, expected %s", name, what, netev_status_name((int32_t)got),
         netev_status_name((int32_t)want));
}

/* `prepare` fills the struct (init_sized with `size`, plus what the reader
 * needs); then each case changes it and reads it. */
static void check_reader(const char *name, init_fn init, read_fn read, size_t header_size,
                         size_t first, void (*prepare)(void *), size_t bool_offset) {
  room r;
  char what[128];
#define PREPARE(n)                                                             \
  do {                                                                         \
    memset(r.bytes, FILL, sizeof r.bytes);                                     \
    CHECK_OK(init(r.bytes, (n)));                                              \
    if (prepare) prepare(r.bytes);                                             \
  } while (0)

  PREPARE(header_size);
  expect(read(r.bytes), NETEV_OK, name, "this header's size");

  const uint64_t bad[] = {0, 3, first - 1, NETEV_OPTIONS_SIZE_MAX + 1, UINT32_MAX};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    PREPARE(header_size);
    set_size(&r, bad[i]);
    snprintf(what, sizeof what, "size %llu", (unsigned long long)bad[i]);
    expect(read(r.bytes), NETEV_ERR_INVALID_ARGUMENT, name, what);
  }

  /* Sizes above the maximum at a guard page: refused before any read. */
  long ps = sysconf(_SC_PAGESIZE);
  CHECK(ps > 0);
  unsigned char *map =
      mmap(NULL, 2 * (size_t)ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(map != MAP_FAILED);
  CHECK(mprotect(map + ps, (size_t)ps, PROT_NONE) == 0);
  unsigned char *at = map + ps - header_size;
  PREPARE(header_size);
  memcpy(at, r.bytes, header_size);
  const uint32_t huge[] = {NETEV_OPTIONS_SIZE_MAX + 1, UINT32_MAX};
  for (size_t i = 0; i < 2; i++) {
    memcpy(at, &huge[i], sizeof huge[i]);
    snprintf(what, sizeof what, "size %u at a guard page", huge[i]);
    expect(read(at), NETEV_ERR_INVALID_ARGUMENT, name, what);
  }
  CHECK(munmap(map, 2 * (size_t)ps) == 0);

  /* A newer header's larger struct: zeros past ours are its defaults. */
  size_t big = header_size + 40;
  PREPARE(big);
  expect(read(r.bytes), NETEV_OK, name, "40 more bytes, all zero");
  PREPARE(NETEV_OPTIONS_SIZE_MAX);
  expect(read(r.bytes), NETEV_OK, name, "NETEV_OPTIONS_SIZE_MAX bytes, all zero");
  /* A non-zero byte where no version of the struct has a field yet: the
   * last byte of the largest size and, when this header is the library's
   * own, the first byte past its struct. */
  const struct {
    size_t size, at;
  } unknown[] = {{NETEV_OPTIONS_SIZE_MAX, NETEV_OPTIONS_SIZE_MAX - 1},
#ifndef NETEV_TEST_RELEASED_HEADER
                 {big, header_size},
                 {big, big - 1},
#endif
  };
  for (size_t i = 0; i < sizeof unknown / sizeof *unknown; i++) {
    PREPARE(unknown[i].size);
    r.bytes[unknown[i].at] = 1;
    snprintf(what, sizeof what, "byte %zu of %zu (past this library's struct) set", unknown[i].at,
             unknown[i].size);
    expect(read(r.bytes), NETEV_ERR_INVALID_ARGUMENT, name, what);
    char want[64];
    snprintf(want, sizeof want, "field at byte %zu", unknown[i].at);
    check_message(want, what);
    check_message("does not know", what);
  }

  /* The first version's size: the garbage after it is never read. */
  PREPARE(header_size);
  set_size(&r, first);
  memset(r.bytes + first, FILL, sizeof r.bytes - first);
  expect(read(r.bytes), NETEV_OK, name, "the first version's size and garbage after it");

  /* A bool that is not 0 or 1. */
  if (bool_offset) {
    PREPARE(header_size);
    r.bytes[bool_offset] = 2;
    expect(read(r.bytes), NETEV_ERR_INVALID_ARGUMENT, name, "a bool field holding 2");
    check_message("is 2: a bool is 0 (false) or 1 (true)", name);
  }
#undef PREPARE
}

static void prepare_listener(void *o) {
  ((netev_listener_options *)o)->bind_address = "127.0.0.1";
}

/* ---- 3. NETEV_OPTIONS_HAS ----------------------------------------------- */

static void check_has(void) {
  netev_connection_options o;
  CHECK_OK(netev_connection_options_init(&o));
  CHECK(NETEV_OPTIONS_HAS(&o, netev_connection_options, size));
  CHECK(NETEV_OPTIONS_HAS(&o, netev_connection_options, on_end));
  CHECK(NETEV_OPTIONS_HAS(&o, netev_connection_options, dispatcher));
  o.size = (uint32_t)offsetof(netev_connection_options, dispatcher);
  CHECK(!NETEV_OPTIONS_HAS(&o, netev_connection_options, dispatcher));
  CHECK(NETEV_OPTIONS_HAS(&o, netev_connection_options, send_buffer_limit));
  o.size = (uint32_t)offsetof(netev_connection_options, dispatcher) + 7;
  CHECK(!NETEV_OPTIONS_HAS(&o, netev_connection_options, dispatcher));
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  CHECK(NETEV_OPTIONS_HAS(&lo, netev_listener_options, connection_defaults));
  CHECK(NETEV_OPTIONS_HAS(&lo, netev_listener_options, dispatcher));
  netev_runtime_options ro;
  CHECK_OK(netev_runtime_options_init(&ro));
  CHECK(NETEV_OPTIONS_HAS(&ro, netev_runtime_options, worker_threads));
}

/* ---- 4. the accept callback's options ----------------------------------- */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int accepted, bad_options, listener_errors, frees, bad_sends;
static netev_status listener_error;
static char listener_message[256];

static void echo_data(netev_connection c, const netev_event *e, void *ud) {
  (void)ud;
  netev_status st = netev_connection_send(c, e->data, e->data_len);
  if (st != NETEV_OK && st != NETEV_ERR_CLOSED) {
    pthread_mutex_lock(&mu);
    bad_sends++;
    pthread_mutex_unlock(&mu);
  }
}

/* The library's options: at least this header's size, every field there. */
static int library_options(const netev_connection_options *o) {
  return o->size >= sizeof *o && NETEV_OPTIONS_HAS(o, netev_connection_options, on_connection) &&
         NETEV_OPTIONS_HAS(o, netev_connection_options, user_data_free) &&
         NETEV_OPTIONS_HAS(o, netev_connection_options, dispatcher);
}

/* Resets the options as a host with a newer header would, and accepts. */
static bool accept_newer_reset(netev_listener l, const netev_event *e, void *ud,
                               netev_connection_options *o) {
  (void)l, (void)e, (void)ud;
  pthread_mutex_lock(&mu);
  accepted++;
  if (!library_options(o)) bad_options++;
  pthread_mutex_unlock(&mu);
  size_t newer = (size_t)o->size + 64;
  if (newer > NETEV_OPTIONS_SIZE_MAX ||
      netev_connection_options_init_sized(o, newer) != NETEV_OK) {
    pthread_mutex_lock(&mu);
    bad_options++;
    pthread_mutex_unlock(&mu);
    return false;
  }
  o->on_data = echo_data;
  return true;
}

static void count_free(void *ud) {
  (void)ud;
  pthread_mutex_lock(&mu);
  frees++;
  pthread_mutex_unlock(&mu);
}

/* Sets a field this library does not know, as a newer host might, and
 * accepts: after growing `size` as a newer init would, or without. */
static int unknown_field_inside_size;
static bool accept_unknown_field(netev_listener l, const netev_event *e, void *ud,
                                 netev_connection_options *o) {
  (void)l, (void)e, (void)ud;
  pthread_mutex_lock(&mu);
  accepted++;
  if (!library_options(o)) bad_options++;
  pthread_mutex_unlock(&mu);
  o->on_data = echo_data;
  o->user_data_free = count_free;
  unsigned char *bytes = (unsigned char *)o;
  uint32_t ours = o->size;
  if (ours + 16 > NETEV_OPTIONS_SIZE_MAX) return false;
  if (unknown_field_inside_size) o->size = ours + 16; /* as after a newer init */
  /* else: set without NETEV_OPTIONS_HAS, past the size netev gave */
  bytes[ours + 8] = 1;
  return true;
}

static void listener_cb(netev_listener l, const netev_event *e, void *ud) {
  (void)l, (void)ud;
  if (e->type != NETEV_EVENT_ERROR) return;
  pthread_mutex_lock(&mu);
  listener_errors++;
  listener_error = e->error;
  snprintf(listener_message, sizeof listener_message, "%s", e->message);
  pthread_mutex_unlock(&mu);
}

static int get(int *field) {
  pthread_mutex_lock(&mu);
  int v = *field;
  pthread_mutex_unlock(&mu);
  return v;
}
/* `arg`: how many are due. */
static int pred_error(void *arg) { return get(&listener_errors) >= (int)(intptr_t)arg; }
static int pred_freed(void *arg) { return get(&frees) >= (int)(intptr_t)arg; }

static netev_listener open_accepting(netev_accept_callback cb, uint16_t *port) {
  netev_listener_options lo;
  CHECK_OK(netev_listener_options_init(&lo));
  lo.bind_address = "127.0.0.1";
  lo.on_connection = cb;
  lo.on_error = listener_cb;
  netev_listener l = 0;
  CHECK_OK(netev_listener_open(0, &lo, &l));
  CHECK_OK(netev_listener_port(l, port));
  return l;
}

static void check_accept_room(void) {
  TEST_STAGE = "accept: options reset as a newer header would";
  uint16_t port = 0;
  netev_listener l = open_accepting(accept_newer_reset, &port);
  int fd = bsd_connect("127.0.0.1", port);
  if (fd < 0) FAIL("connect: %s", strerror(errno));
  const unsigned char msg[] = "room to grow";
  CHECK(write_all(fd, msg, sizeof msg) == 0);
  unsigned char back[sizeof msg];
  if (bsd_recv_exact(fd, back, sizeof back, 10) != 0 || memcmp(back, msg, sizeof msg) != 0)
    FAIL("no echo from a connection whose on_connection reset its options with 64 more bytes");
  close(fd);
  CHECK(get(&accepted) == 1 && get(&bad_options) == 0);
  CHECK(get(&listener_errors) == 0);
  CHECK_OK(netev_listener_release(l));

  for (int round = 0; round < 2; round++) {
    unknown_field_inside_size = round == 0;
    TEST_STAGE = round == 0 ? "accept: a field this library does not know, inside size"
                            : "accept: a field this library does not know, past size";
    l = open_accepting(accept_unknown_field, &port);
    fd = bsd_connect("127.0.0.1", port);
    if (fd < 0) FAIL("connect: %s", strerror(errno));
    (void)write_all(fd, msg, sizeof msg); /* may meet the close: fine */
    int end = bsd_recv_end(fd, 10);
    if (end == -1 || end == ETIMEDOUT)
      FAIL("the client of a connection accepted with an unknown field was %s (%s)",
           end == -1 ? "answered" : "neither closed nor reset within 10 s", TEST_STAGE);
    close(fd);
    if (!poll_until(pred_error, (void *)(intptr_t)(round + 1), 10))
      FAIL("no listener ERROR for the unknown field (%s)", TEST_STAGE);
    pthread_mutex_lock(&mu);
    netev_status err = listener_error;
    char message[256];
    snprintf(message, sizeof message, "%s", listener_message);
    pthread_mutex_unlock(&mu);
    if (err != NETEV_ERR_INVALID_ARGUMENT || !strstr(message, "does not know"))
      FAIL("listener ERROR %s \"%s\", expected NETEV_ERR_INVALID_ARGUMENT about an unknown field",
           netev_status_name((int32_t)err), message);
    if (!poll_until(pred_freed, (void *)(intptr_t)(round + 1), 10))
      FAIL("user_data_free of the refused options never ran (%s)", TEST_STAGE);
    CHECK_OK(netev_listener_release(l));
  }
  CHECK_OK(netev_runtime_shutdown(10));
  CHECK(get(&accepted) == 3 && get(&bad_options) == 0 && get(&frees) == 2);
  CHECK(get(&listener_errors) == 2 && get(&bad_sends) == 0);
}

int main(void) {
  watchdog_staged("abi_sizes", 60);
  TEST_STAGE = "init_sized";
  check_init("netev_connection_options", init_connection,
             sizeof(netev_connection_options), FIRST_CONNECTION);
  check_init("netev_listener_options", init_listener, sizeof(netev_listener_options),
             FIRST_LISTENER);
  check_init("netev_runtime_options", init_runtime, sizeof(netev_runtime_options),
             FIRST_RUNTIME);
  CHECK_STATUS(netev_connection_options_init(NULL), NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_listener_options_init(NULL), NETEV_ERR_NULL_ARGUMENT);
  CHECK_STATUS(netev_runtime_options_init(NULL), NETEV_ERR_NULL_ARGUMENT);

  TEST_STAGE = "readers";
  check_reader("netev_runtime_init", init_runtime, init_runtime_with,
               sizeof(netev_runtime_options), FIRST_RUNTIME, NULL, 0);
  check_reader("netev_connection_open", init_connection, open_connection,
               sizeof(netev_connection_options), FIRST_CONNECTION, NULL,
               offsetof(netev_connection_options, allow_half_open));
  check_reader("netev_listener_open", init_listener, open_listener,
               sizeof(netev_listener_options), FIRST_LISTENER, prepare_listener,
               offsetof(netev_listener_options, reuse_port));
  check_reader("netev_listener_open's connection_defaults", init_connection,
               open_listener_defaults, sizeof(netev_connection_options), FIRST_CONNECTION, NULL,
               offsetof(netev_connection_options, no_delay));

  TEST_STAGE = "NETEV_OPTIONS_HAS";
  check_has();

  check_accept_room();
  printf("sizes refused and taken as the header says; the accept callback's room\n");
  return 0;
}
