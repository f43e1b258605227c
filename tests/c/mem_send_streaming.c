/* Memory bound while streaming at the send limit: a host streams 512 MiB in
 * 64 KiB sends with the default send_buffer_limit (8 MiB), resuming on each
 * DRAIN with the refused chunk, to a BSD peer (SO_RCVBUF 64 KiB) that reads
 * 64 KiB at a time as fast as it can. The queue never empties, yet what
 * netev holds must stay within the limit + 1 MiB + a fixed overhead (API.md,
 * "Precise rules"): the process may grow by at most limit + 2 MiB + 16 MiB.
 * The peer must get every byte, once, in order. */
#include "common_mem.h"

int main(void) {
  watchdog(180);
  stream_params sp = {
      .test = "mem_send_streaming",
      .total = (size_t)test_scale(512L * MEM_MIB, 48L * MEM_MIB),
      .rcvbuf = 64 * 1024,
      .read_size = 64 * 1024,
      .pause_every = 4, /* a pause now and then: slower than the host, so the queue stays full */
      .pause_s = 0.001,
      .no_delay = false,
  };
  stream_at_limit(&sp);
  return 0;
}
