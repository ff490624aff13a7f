/* A Wasmill handler in C. Build it with `wasmill build .` (or `make`). */
#include "wasmill.h"

/* Called for every message: emit what to publish (the message itself, changed or not, or new
 * ones), or fail it with wasmill_fail(out, "reason", retryable). */
static bool handle(wasmill_msg_t msg, wasmill_out_t *out) {
    return wasmill_emit(out, msg);
}

WASMILL_HANDLER(handle)
